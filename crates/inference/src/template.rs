//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja, as Hugging Face writes
//! them) rendered with minijinja plus the Python-compatible methods real templates call
//! (`.strip()`, `.startswith()`, ...), `raise_exception` and `strftime_now`. Files
//! without a template get ChatML.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

use crate::error::{Error, Result};

/// ChatML, the fallback for files without a template.
pub(crate) const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const NAME: &str = "chat";

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Whether the file's own template is used (false: ChatML fallback).
    pub(crate) from_file: bool,
}

/// One message as templates see it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TemplateMessage {
    pub(crate) role: String,
    pub(crate) content: String,
}

impl ChatTemplate {
    /// Compile `source`, or ChatML when `None`.
    pub(crate) fn new(source: Option<&str>, bos: &str, eos: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        let from_file = source.is_some();
        env.add_template_owned(NAME, source.unwrap_or(CHATML_TEMPLATE).to_owned())
            .map_err(|e| Error::Template(format!("chat template does not compile: {e}")))?;
        Ok(ChatTemplate { env, bos: bos.to_owned(), eos: eos.to_owned(), from_file })
    }

    /// Render a conversation, ending with the assistant's turn opened.
    pub(crate) fn render(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Template(format!("chat template missing: {e}")))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos,
                eos_token => &self.eos,
                tools => tools,
            })
            .map_err(|e| {
                Error::InvalidRequest(format!("chat template rejected the conversation: {e}"))
            })
    }
}

/// `strftime_now` for templates that print today's date (Llama 3): supports the
/// common `%d %b %Y %B %m %y %H %M` fields.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86_400;
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[usize::try_from(m - 1).unwrap_or(0).min(11)];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(pairs: &[(&str, &str)]) -> Vec<TemplateMessage> {
        pairs
            .iter()
            .map(|(r, c)| TemplateMessage { role: (*r).into(), content: (*c).into() })
            .collect()
    }

    #[test]
    fn chatml_fallback_renders_the_generation_prompt() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        let out = t.render(&msgs(&[("system", "be brief"), ("user", "hi")]), None).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}[{{ m.role.upper() }}] {{ m.content.strip() }}{% if m.content.strip().startswith('x') %}!{% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(Some(src), "<s>", "</s>").unwrap();
        let out = t.render(&msgs(&[("user", "  xyz  ")]), None).unwrap();
        // trim_blocks eats the newline after `{% endif %}`, as in Hugging Face's renderer.
        assert_eq!(out, "<s>[USER] xyz!");
        let err = t.render(&msgs(&[("tool", "r")]), None).unwrap_err();
        assert!(err.to_string().contains("no tools"), "{err}");
    }

    #[test]
    fn bad_template_is_a_load_error() {
        assert!(ChatTemplate::new(Some("{% for %}"), "", "").is_err());
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert!(!strftime_now("%d %b %Y").contains('%'));
    }
}
