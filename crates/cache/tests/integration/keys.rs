//! The canonical key: equal for semantically equal requests, different otherwise.

use proptest::prelude::*;
use serde_json::{Map, Value};
use switchyard_cache::{CacheKey, IGNORED_FIELDS};
use switchyard_core::Endpoint;

/// Arbitrary JSON, small enough to be quick.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z \u{e9}\"\\\\\n]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-e]{1,3}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body: a model, messages and arbitrary other fields.
fn body() -> impl Strategy<Value = Map<String, Value>> {
    (
        "[a-z]{1,6}",
        prop::collection::vec("[a-z ]{0,12}", 1..4),
        prop::collection::btree_map("[a-z_]{1,8}", json(), 0..6),
    )
        .prop_map(|(model, messages, extra)| {
            let mut body = Map::new();
            for (k, v) in extra {
                if !IGNORED_FIELDS.contains(&k.as_str()) {
                    body.insert(k, v);
                }
            }
            body.insert("model".into(), Value::String(model));
            let messages = messages
                .into_iter()
                .map(|content| serde_json::json!({"role": "user", "content": content}))
                .collect();
            body.insert("messages".into(), Value::Array(messages));
            body
        })
}

fn next(seed: &mut u64) -> usize {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*seed >> 33) as usize
}

/// Write `value` with object members in an order and whitespace chosen by `seed`.
fn write_shuffled(value: &Value, seed: &mut u64, out: &mut String) {
    let space = |n: usize| [" ", "", "\n  ", "\t", "\r\n"][n % 5];
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            for i in (1..members.len()).rev() {
                members.swap(i, next(seed) % (i + 1));
            }
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(space(next(seed)));
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(space(next(seed)));
                out.push(':');
                write_shuffled(v, seed, out);
            }
            out.push_str(space(next(seed)));
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(space(next(seed)));
                write_shuffled(v, seed, out);
            }
            out.push(']');
        }
        Value::String(s) if next(seed).is_multiple_of(2) => {
            // Escape every non-ASCII and some ASCII characters as \uXXXX.
            out.push('"');
            for c in s.chars() {
                if c.is_ascii_alphanumeric() && next(seed).is_multiple_of(2) {
                    out.push(c);
                } else {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
            out.push('"');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

fn key(tenant: &str, body: &str) -> CacheKey {
    CacheKey::compute(tenant, Endpoint::ChatCompletions, body.as_bytes()).unwrap()
}

/// Every path to a value inside `value` (object keys and array indices).
fn paths(value: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Value::String(k.clone()));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(Value::from(i));
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(value: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(value, |v, step| match step {
        Value::String(k) => v.get_mut(k.as_str()).unwrap(),
        Value::Number(i) => v.get_mut(i.as_u64().unwrap() as usize).unwrap(),
        _ => unreachable!(),
    })
}

/// A different value of a possibly different type.
fn mutate(value: &Value, choice: usize) -> Value {
    match (value, choice % 4) {
        (Value::String(s), 0) => Value::String(format!("{s}x")),
        (Value::Number(n), 0) if n.is_f64() => Value::from(n.as_f64().unwrap() + 1.5),
        (Value::Number(n), 0) => Value::from(n.as_i64().map_or(0, |i| i.wrapping_add(1))),
        (Value::Bool(b), 0) => Value::Bool(!b),
        (Value::Array(items), 1) => {
            let mut items = items.clone();
            items.push(Value::Null);
            Value::Array(items)
        }
        (Value::Object(map), 1) => {
            let mut map = map.clone();
            map.insert("zz_new".into(), Value::Null);
            Value::Object(map)
        }
        (Value::Null, _) => Value::Bool(false),
        (_, 2) => Value::Null,
        (_, _) => Value::String("replaced".into()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn semantically_equal_bodies_have_equal_keys(body in body(), seed in any::<u64>(), user in "[a-z]{0,5}") {
        let value = Value::Object(body);
        let plain = serde_json::to_string(&value).unwrap();
        let mut seed = seed;
        let mut shuffled = String::new();
        write_shuffled(&value, &mut seed, &mut shuffled);
        // An ignored field changes nothing either.
        let mut with_user = value.clone();
        with_user.as_object_mut().unwrap().insert("user".into(), Value::String(user));
        let with_user = serde_json::to_string(&with_user).unwrap();
        let expected = key("tenant", &plain);
        prop_assert_eq!(*key("tenant", &shuffled).digest(), *expected.digest(), "{}", shuffled);
        prop_assert_eq!(*key("tenant", &with_user).digest(), *expected.digest());
    }

    #[test]
    fn any_output_affecting_change_changes_the_key(
        body in body(), pick in any::<prop::sample::Index>(), choice in 0usize..4, tenant in "[a-z]{1,4}",
    ) {
        let value = Value::Object(body);
        let base = key(&tenant, &serde_json::to_string(&value).unwrap());
        // Every field but the ignored ones affects the output; change one at random.
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        all.retain(|p| !p.is_empty());
        let path = pick.get(&all).clone();
        let mut changed = value.clone();
        let target = at(&mut changed, &path);
        *target = mutate(target, choice);
        prop_assume!(changed != value);
        let other = key(&tenant, &serde_json::to_string(&changed).unwrap());
        prop_assert_ne!(other.digest(), base.digest(), "changed {:?}", path);
        // And the same body for another tenant is another key.
        let other_tenant = key(&format!("{tenant}2"), &serde_json::to_string(&value).unwrap());
        prop_assert_ne!(&other_tenant, &base);
        prop_assert_ne!(other_tenant.digest(), base.digest());
    }
}
