//! Workspace rules that are cheaper to check than to review: the layering of crates
//! (docs/architecture.md, "Layering"), where heavy dependencies may appear, lints and
//! crate docs.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Package {
    name: String,
    manifest: PathBuf,
    /// (dependency name, kind: "normal" | "dev" | "build")
    deps: Vec<(String, String)>,
}

fn workspace() -> (PathBuf, Vec<Package>) {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let meta: Value = serde_json::from_slice(&output.stdout).unwrap();
    let root = PathBuf::from(meta["workspace_root"].as_str().unwrap());
    let packages = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Package {
            name: p["name"].as_str().unwrap().to_owned(),
            manifest: PathBuf::from(p["manifest_path"].as_str().unwrap()),
            deps: p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    (d["name"].as_str().unwrap().to_owned(), kind)
                })
                .collect(),
        })
        .collect();
    (root, packages)
}

/// Internal crates each crate may depend on (normal dependencies).
fn allowed_internal(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "switchyard-core" => &[],
        "switchyard-config"
        | "switchyard-strategy"
        | "switchyard-health"
        | "switchyard-cache"
        | "switchyard-inference"
        | "switchyard-backends"
        | "switchyard-test-support" => &["switchyard-core"],
        "switchyard-server" => &[
            "switchyard-core",
            "switchyard-config",
            "switchyard-strategy",
            "switchyard-health",
            "switchyard-cache",
            "switchyard-inference",
            "switchyard-backends",
        ],
        "switchyard" => &["switchyard-server", "switchyard-config"],
        // Example programs embed whatever they show.
        "switchyard-examples" => return None,
        other => panic!("unknown workspace member {other}: add it to the layering rules"),
    })
}

#[test]
fn crates_depend_only_on_what_the_layering_allows() {
    let (_, packages) = workspace();
    let mut violations = Vec::new();
    for package in &packages {
        let allowed = allowed_internal(&package.name);
        for (dep, kind) in &package.deps {
            if !dep.starts_with("switchyard") {
                continue;
            }
            if dep == "switchyard-test-support" {
                if kind != "dev" {
                    violations.push(format!("{} -> {dep} must be a dev-dependency", package.name));
                }
                continue;
            }
            if kind == "dev" {
                // Tests may use concrete implementations (style rule 2), except upward edges.
                if dep == "switchyard-server"
                    && package.name != "switchyard"
                    && package.name != "switchyard-examples"
                {
                    violations.push(format!(
                        "{} -> {dep}: only the binary uses the server",
                        package.name
                    ));
                }
                continue;
            }
            if let Some(allowed) = allowed
                && !allowed.contains(&dep.as_str())
            {
                violations
                    .push(format!("{} -> {dep} is not allowed by the layering rule", package.name));
            }
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn heavy_dependencies_stay_where_they_belong() {
    let (_, packages) = workspace();
    let rules: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("candle-core", &["switchyard-inference"][..]),
        ("candle-transformers", &["switchyard-inference"][..]),
        ("candle-nn", &["switchyard-inference"][..]),
        ("tokenizers", &["switchyard-inference"][..]),
        ("hyper", &["switchyard-backends", "switchyard-server", "switchyard-test-support"][..]),
        ("hyper-rustls", &["switchyard-backends", "switchyard-server"][..]),
        ("rustls", &["switchyard-backends", "switchyard-server", "switchyard"][..]),
        ("metrics-exporter-prometheus", &["switchyard"][..]),
        ("openssl", &[][..]),
        ("openssl-sys", &[][..]),
        ("native-tls", &[][..]),
    ]);
    let mut violations = Vec::new();
    for package in &packages {
        for (dep, kind) in &package.deps {
            if kind == "dev" || package.name == "switchyard-examples" {
                continue;
            }
            if let Some(allowed) = rules.get(dep.as_str())
                && !allowed.contains(&package.name.as_str())
            {
                violations.push(format!("{} depends on {dep}", package.name));
            }
        }
    }
    assert!(violations.is_empty(), "misplaced dependencies:\n{}", violations.join("\n"));
}

#[test]
fn every_member_uses_workspace_lints_and_documents_its_crate() {
    let (root, packages) = workspace();
    let architecture =
        std::fs::read_to_string(root.join("docs/architecture.md")).unwrap_or_default();
    let mut problems = Vec::new();
    for package in &packages {
        let manifest = std::fs::read_to_string(&package.manifest).unwrap();
        if !manifest.contains("[lints]\nworkspace = true") {
            problems.push(format!("{}: missing `[lints] workspace = true`", package.name));
        }
        let dir = package.manifest.parent().unwrap();
        let lib = dir.join("src/lib.rs");
        if lib.exists() {
            let text = std::fs::read_to_string(&lib).unwrap();
            if !text.starts_with("//!") {
                problems.push(format!("{}: src/lib.rs must open with //! docs", package.name));
            }
        }
        let relative = dir.strip_prefix(&root).unwrap_or(dir);
        if relative.starts_with("crates") && !architecture.contains(&relative.display().to_string())
        {
            problems.push(format!("docs/architecture.md does not mention {}", relative.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The one file outside the inference crate allowed `unsafe`: the binary's global
/// allocator, which forwards to mimalloc.
const ALLOCATOR: &str = "bins/switchyard/src/alloc.rs";

#[test]
fn only_the_inference_crate_and_the_allocator_allow_unsafe_code() {
    let (root, packages) = workspace();
    let mut hits = Vec::new();
    for package in packages.iter().filter(|p| p.name != "switchyard-inference") {
        let src = package.manifest.parent().unwrap().join("src");
        scan(&src, &mut |path, text| {
            let relative = path.strip_prefix(&root).unwrap_or(path);
            if relative == std::path::Path::new(ALLOCATOR) {
                return;
            }
            if text.contains("allow(unsafe_code)") || text.contains("unsafe {") {
                hits.push(relative.display().to_string());
            }
        });
    }
    assert!(hits.is_empty(), "unsafe code outside switchyard-inference:\n{}", hits.join("\n"));
    assert!(root.join(ALLOCATOR).is_file(), "{ALLOCATOR} moved: update this test");
}

#[test]
fn no_unwrap_or_expect_in_library_code() {
    let (root, packages) = workspace();
    let mut hits = Vec::new();
    for package in &packages {
        let src = package.manifest.parent().unwrap().join("src");
        scan(&src, &mut |path, text| {
            // Everything after the unit-test module marker is test code.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (n, line) in code.lines().enumerate() {
                let trimmed = line.trim_start();
                if trimmed.starts_with("//") {
                    continue;
                }
                if line.contains(".unwrap()") || line.contains(".expect(") {
                    let rel = path.strip_prefix(&root).unwrap_or(path);
                    hits.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
                }
            }
        });
    }
    // Binaries of test-support are test code too.
    hits.retain(|h| !h.contains("test-support/"));
    assert!(hits.is_empty(), "unwrap/expect outside tests:\n{}", hits.join("\n"));
}

/// The release build reads `pgo/switchyard.profdata` (scripts/release-flags.sh). rustc only
/// warns about a profile it cannot read and builds without it, so a damaged or replaced
/// file (a Git LFS pointer, a truncated copy) would silently cost the router its
/// optimisation: compile a small crate with it and fail on any warning.
#[test]
fn the_release_profile_is_one_rustc_reads() {
    let (root, _) = workspace();
    let profile = root.join("pgo/switchyard.profdata");
    assert!(profile.is_file(), "{} is missing: run scripts/pgo-profile.sh", profile.display());
    let flags = std::fs::read_to_string(root.join("scripts/release-flags.sh")).unwrap();
    assert!(
        flags.contains("pgo/switchyard.profdata"),
        "scripts/release-flags.sh no longer uses the profile"
    );

    let dir = std::env::temp_dir().join(format!("switchyard-pgo-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("check.rs");
    std::fs::write(&source, "pub fn next(x: u32) -> u32 { x.wrapping_add(1) }\n").unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc)
        .args(["--crate-type", "lib", "--edition", "2021", "-O", "--out-dir"])
        .arg(&dir)
        .arg(format!("-Cprofile-use={}", profile.display()))
        .arg(&source)
        .output()
        .expect("rustc runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rustc failed with the profile:\n{stderr}");
    assert!(!stderr.contains("warning"), "rustc cannot use the profile:\n{stderr}");
}

fn scan(dir: &Path, visit: &mut dyn FnMut(&Path, &str)) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            scan(&path, visit);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            visit(&path, &text);
        }
    }
}
