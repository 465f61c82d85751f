//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), matching llama.cpp.
//!
//! - `gpt2` vocabularies (SmolLM2, Llama 3, Qwen2): a `tokenizers` byte-level BPE from
//!   the token list and merges, with the pre-tokenizer regexes llama.cpp uses for the
//!   file's `tokenizer.ggml.pre`, and control/user-defined tokens registered as special
//!   so `<|im_start|>user` encodes as llama.cpp encodes it. (candle's own GGUF
//!   tokenizer adds a space after every special token and refuses SentencePiece.)
//! - `llama` vocabularies (SentencePiece: Llama 2, TinyLlama, Mistral, Gemma):
//!   special tokens split out first (longest match), then score-driven pair merging
//!   over `▁`-joined characters with `<0xXX>` byte fallback, as llama.cpp does.
//!
//! Decoding goes through a per-token byte table, and [`StreamDecoder`] turns a token
//! stream into text that is always valid UTF-8, holding back a character split across
//! tokens until it is complete.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// GGUF token types.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
#[cfg(test)]
const TYPE_BYTE: i32 = 6;

const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Texts of end-of-generation tokens across model families (when they are control
/// tokens of the vocabulary).
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "</s>",
];

/// A GGUF model's tokenizer.
pub struct Tokenizer {
    kind: Kind,
    /// What each token decodes to; empty for control tokens.
    bytes: Vec<Vec<u8>>,
    /// Texts of all tokens, as stored in the vocabulary.
    texts: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    end_of_generation: Vec<u32>,
}

enum Kind {
    Bpe(Box<tokenizers::Tokenizer>),
    Spm(Box<Spm>),
}

struct Spm {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `(text, id)` of tokens matched literally before merging, longest first.
    specials: Vec<(String, u32)>,
    byte_tokens: [Option<u32>; 256],
    unk: u32,
    add_space_prefix: bool,
}

/// Turns generated tokens into text chunks that are always valid UTF-8.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    /// Strip one leading space from the first text (SentencePiece word marker).
    strip_leading_space: bool,
    started: bool,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    pub(crate) fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file.str("tokenizer.ggml.model").unwrap_or("llama");
        let texts = string_array(file, "tokenizer.ggml.tokens")?.ok_or_else(|| {
            Error::Tokenizer("gguf metadata lacks `tokenizer.ggml.tokens`".into())
        })?;
        let types =
            int_array(file, "tokenizer.ggml.token_type").unwrap_or_else(|| vec![1; texts.len()]);
        let bos = file.opt_usize("tokenizer.ggml.bos_token_id").and_then(to_id);
        let eos = file.opt_usize("tokenizer.ggml.eos_token_id").and_then(to_id);
        match model {
            "gpt2" => {
                let merges = string_array(file, "tokenizer.ggml.merges")?.unwrap_or_default();
                let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
                let add_bos = file.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
                let mut t = Self::bpe(&texts, &types, &merges, pre)?;
                t.bos = bos;
                t.eos = eos;
                t.add_bos = add_bos && bos.is_some();
                t.finish(file);
                Ok(t)
            }
            "llama" => {
                let scores = float_array(file, "tokenizer.ggml.scores")
                    .unwrap_or_else(|| vec![0.0; texts.len()]);
                let add_space_prefix =
                    file.opt_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let add_bos = file.opt_bool("tokenizer.ggml.add_bos_token").unwrap_or(true);
                let unk = file.opt_usize("tokenizer.ggml.unknown_token_id").and_then(to_id);
                let mut t = Self::spm(&texts, &types, scores, add_space_prefix, unk.unwrap_or(0));
                t.bos = bos;
                t.eos = eos;
                t.add_bos = add_bos && bos.is_some();
                t.finish(file);
                Ok(t)
            }
            other => Err(Error::Tokenizer(format!("unsupported tokenizer model `{other}`"))),
        }
    }

    /// A byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`).
    pub(crate) fn bpe(
        texts: &[String],
        types: &[i32],
        merges: &[String],
        pre: &str,
    ) -> Result<Self> {
        let vocab: ahash::AHashMap<String, u32> =
            texts.iter().enumerate().filter_map(|(i, t)| Some((t.clone(), to_id(i)?))).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let ignore_merges = matches!(pre, "llama-bpe" | "llama3");
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| Error::Tokenizer(format!("invalid bpe vocabulary: {e}")))?;
        let regexes: &[&str] = match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => &[r"\p{N}", GPT2_REGEX],
            "llama-bpe" | "llama3" | "falcon3" | "pixtral" => &[LLAMA3_REGEX],
            "qwen2" | "deepseek-r1-qwen" | "qwen35" => &[QWEN2_REGEX],
            _ => &[GPT2_REGEX],
        };
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for r in regexes {
            let split = Split::new(
                SplitPattern::Regex((*r).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(format!("bad pre-tokenizer regex: {e}")))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(steps)));
        let special: Vec<AddedToken> = texts
            .iter()
            .zip(types)
            .filter(|(_, ty)| matches!(**ty, TYPE_CONTROL | TYPE_USER_DEFINED))
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(&special);
        let byte_decoder = byte_decoder();
        let bytes = texts
            .iter()
            .zip(types)
            .map(|(t, ty)| match *ty {
                TYPE_CONTROL | TYPE_UNUSED => Vec::new(),
                TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                _ => {
                    let mut out = Vec::with_capacity(t.len());
                    for ch in t.chars() {
                        match byte_decoder.get(&ch) {
                            Some(b) => out.push(*b),
                            None => out.extend_from_slice(ch.to_string().as_bytes()),
                        }
                    }
                    out
                }
            })
            .collect();
        Ok(Tokenizer {
            kind: Kind::Bpe(Box::new(inner)),
            bytes,
            texts: texts.to_vec(),
            bos: None,
            eos: None,
            add_bos: false,
            end_of_generation: Vec::new(),
        })
    }

    /// A SentencePiece tokenizer (`tokenizer.ggml.model = llama`).
    pub(crate) fn spm(
        texts: &[String],
        types: &[i32],
        scores: Vec<f32>,
        add_space_prefix: bool,
        unk: u32,
    ) -> Self {
        let mut ids = HashMap::with_capacity(texts.len());
        let mut byte_tokens = [None; 256];
        let mut specials = Vec::new();
        let mut bytes = Vec::with_capacity(texts.len());
        for (i, (t, ty)) in texts.iter().zip(types).enumerate() {
            let Some(id) = to_id(i) else { break };
            ids.entry(t.clone()).or_insert(id);
            let byte = parse_byte_token(t);
            if let Some(b) = byte {
                byte_tokens[usize::from(b)] = Some(id);
            }
            if matches!(*ty, TYPE_CONTROL | TYPE_USER_DEFINED) && !t.is_empty() {
                specials.push((t.clone(), id));
            }
            bytes.push(match (*ty, byte) {
                (TYPE_CONTROL | TYPE_UNUSED, _) => Vec::new(),
                (_, Some(b)) => vec![b],
                _ => t.replace('\u{2581}', " ").into_bytes(),
            });
        }
        specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        Tokenizer {
            kind: Kind::Spm(Box::new(Spm {
                ids,
                scores,
                specials,
                byte_tokens,
                unk,
                add_space_prefix,
            })),
            bytes,
            texts: texts.to_vec(),
            bos: None,
            eos: None,
            add_bos: false,
            end_of_generation: Vec::new(),
        }
    }

    fn finish(&mut self, file: &GgufFile) {
        let mut eog: Vec<u32> = self.eos.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = file.opt_usize(key).and_then(to_id) {
                eog.push(id);
            }
        }
        let types = int_array(file, "tokenizer.ggml.token_type").unwrap_or_default();
        for (i, t) in self.texts.iter().enumerate() {
            let control = types.get(i).is_none_or(|ty| *ty == TYPE_CONTROL);
            if control
                && END_OF_TURN_TEXTS.contains(&t.as_str())
                && let Some(id) = to_id(i)
            {
                eog.push(id);
            }
        }
        eog.sort_unstable();
        eog.dedup();
        self.end_of_generation = eog;
    }

    /// Set BOS/EOS explicitly (tests and hand-built vocabularies).
    #[cfg(test)]
    pub(crate) fn with_special(
        mut self,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Self {
        self.bos = bos;
        self.eos = eos;
        self.add_bos = add_bos && bos.is_some();
        self.end_of_generation = eos.into_iter().collect();
        self
    }

    /// Encode `text`. Special-token texts in it (`<|im_start|>`) become their tokens.
    /// With `add_bos`, a BOS is prepended when the model wants one and the text does
    /// not already start with it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos
            && self.add_bos
            && let Some(bos) = self.bos
        {
            let bos_text = self.texts.get(bos as usize).map(String::as_str).unwrap_or("");
            if bos_text.is_empty() || !text.starts_with(bos_text) {
                ids.push(bos);
            }
        }
        match &self.kind {
            Kind::Bpe(t) => {
                let enc = t
                    .encode_fast(text, false)
                    .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Kind::Spm(spm) => spm.encode(text, &mut ids),
        }
        Ok(ids)
    }

    /// The bytes token `id` stands for (empty for control tokens and unknown ids).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Decode a whole sequence (lossy on invalid UTF-8).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut d = self.stream_decoder();
        let mut out = String::new();
        for &id in ids {
            out.push_str(&d.push(self.token_bytes(id)));
        }
        out.push_str(&d.finish());
        out
    }

    /// A decoder for generated text.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder {
            strip_leading_space: matches!(&self.kind, Kind::Spm(s) if s.add_space_prefix),
            ..StreamDecoder::default()
        }
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The BOS token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The text of token `id` as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    /// Tokens that end generation, sorted.
    pub(crate) fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Whether `id` ends generation (EOS, end-of-turn).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }
}

impl Spm {
    fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut prev_special = true;
        let mut rest = text;
        let mut plain_start = 0;
        let mut pos = 0;
        while !rest.is_empty() {
            if let Some((t, id)) = self.specials.iter().find(|(t, _)| rest.starts_with(t.as_str()))
            {
                if plain_start < pos {
                    self.encode_plain(&text[plain_start..pos], prev_special, out);
                }
                out.push(*id);
                prev_special = true;
                pos += t.len();
                plain_start = pos;
                rest = &text[pos..];
            } else {
                let step = rest.chars().next().map_or(1, char::len_utf8);
                pos += step;
                rest = &text[pos..];
            }
        }
        if plain_start < pos {
            self.encode_plain(&text[plain_start..pos], prev_special, out);
        }
    }

    fn encode_plain(&self, raw: &str, prev_special: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(raw.len() + 3);
        if self.add_space_prefix && prev_special {
            text.push('\u{2581}');
        }
        for ch in raw.chars() {
            text.push(if ch == ' ' { '\u{2581}' } else { ch });
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, ch) in text.char_indices() {
            let idx = symbols.len();
            symbols.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: idx.checked_sub(1),
                next: Some(idx + 1),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut heap = BinaryHeap::new();
        for i in 1..symbols.len() {
            self.push_bigram(&text, &symbols, i - 1, i, &mut heap);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != Some(b.right) {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.left].next = r.next;
            symbols[b.right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            if let Some(p) = symbols[b.left].prev {
                self.push_bigram(&text, &symbols, p, b.left, &mut heap);
            }
            if let Some(n) = symbols[b.left].next {
                self.push_bigram(&text, &symbols, b.left, n, &mut heap);
            }
        }
        let mut i = if symbols.is_empty() { None } else { Some(0) };
        while let Some(idx) = i {
            let s = symbols[idx];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(id) => out.push(*id),
                None => {
                    for b in piece.bytes() {
                        out.push(self.byte_tokens[usize::from(b)].unwrap_or(self.unk));
                    }
                }
            }
            i = s.next;
        }
    }

    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        heap: &mut BinaryHeap<Bigram>,
    ) {
        let (l, r) = (symbols[left], symbols[right]);
        let piece = &text[l.start..r.start + r.len];
        if let Some(&id) = self.ids.get(piece) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram { score, left, right, len: l.len + r.len });
        }
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Highest score first; on a tie, the leftmost pair first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl StreamDecoder {
    /// Add a token's bytes; returns the text that became complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        self.strip(out)
    }

    /// The stream ended: whatever is left, lossily.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.strip(rest)
    }

    fn strip(&mut self, mut text: String) -> String {
        if !self.started && !text.is_empty() {
            self.started = true;
            if self.strip_leading_space && text.starts_with(' ') {
                text.remove(0);
            }
        }
        text
    }
}

fn to_id(i: usize) -> Option<u32> {
    u32::try_from(i).ok()
}

fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn string_array(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    let Some(value) = file.get(key) else { return Ok(None) };
    let Value::Array(items) = value else {
        return Err(Error::Tokenizer(format!("`{key}` is not an array")));
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(Error::Tokenizer(format!("`{key}` holds a non-string"))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn int_array(file: &GgufFile, key: &str) -> Option<Vec<i32>> {
    let Value::Array(items) = file.get(key)? else { return None };
    items
        .iter()
        .map(|v| match v {
            Value::I32(x) => Some(*x),
            Value::U32(x) => i32::try_from(*x).ok(),
            Value::I8(x) => Some(i32::from(*x)),
            Value::U8(x) => Some(i32::from(*x)),
            _ => None,
        })
        .collect()
}

fn float_array(file: &GgufFile, key: &str) -> Option<Vec<f32>> {
    let Value::Array(items) = file.get(key)? else { return None };
    items
        .iter()
        .map(|v| match v {
            Value::F32(x) => Some(*x),
            _ => None,
        })
        .collect()
}

/// GPT-2's byte-to-character table, inverted.
fn byte_decoder() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let ch = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\u{FFFD}');
            n += 1;
            c
        };
        map.insert(ch, b);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm_fixture() -> Tokenizer {
        let vocab: &[(&str, f32, i32)] = &[
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, TYPE_CONTROL),
            ("</s>", 0.0, TYPE_CONTROL),
            ("\u{2581}", -1.0, 1),
            ("h", -2.0, 1),
            ("e", -2.0, 1),
            ("l", -2.0, 1),
            ("o", -2.0, 1),
            ("\u{2581}h", -3.0, 1),
            ("ll", -1.5, 1),
            ("\u{2581}he", -2.5, 1),
            ("llo", -1.0, 1),
            ("\u{2581}hello", -0.5, 1),
            ("<0xC3>", 0.0, TYPE_BYTE),
            ("<0xA9>", 0.0, TYPE_BYTE),
            ("<0x21>", 0.0, TYPE_BYTE),
            ("<|user|>", 0.0, TYPE_USER_DEFINED),
        ];
        let texts: Vec<String> = vocab.iter().map(|v| v.0.to_owned()).collect();
        let scores = vocab.iter().map(|v| v.1).collect();
        let types: Vec<i32> = vocab.iter().map(|v| v.2).collect();
        Tokenizer::spm(&texts, &types, scores, true, 0).with_special(Some(1), Some(2), true)
    }

    #[test]
    fn sentencepiece_merges_by_score_and_falls_back_to_bytes() {
        let t = spm_fixture();
        // "▁hello": "ll" (-1.5), then "llo" (-1.0), "▁h" (-3.0), "▁he", "▁hello".
        assert_eq!(t.encode("hello", true).unwrap(), vec![1, 12]);
        // "é" is not in the vocabulary: its two UTF-8 bytes come out as byte tokens.
        assert_eq!(t.encode("hello é!", false).unwrap(), vec![12, 3, 13, 14, 15]);
        // Special tokens split out first; plain text after them gets the space prefix.
        assert_eq!(t.encode("<|user|>hello", false).unwrap(), vec![16, 12]);
        assert_eq!(t.decode(&[1, 12, 3, 13, 14, 15, 2]), "hello é!");
    }

    #[test]
    fn bos_is_not_doubled_when_the_text_starts_with_it() {
        let t = spm_fixture();
        assert_eq!(t.encode("<s>hello", true).unwrap(), vec![1, 12]);
    }

    #[test]
    fn stream_decoder_never_splits_a_character() {
        let mut d = StreamDecoder::default();
        let euro = "€".as_bytes();
        assert_eq!(d.push(b"a"), "a");
        assert_eq!(d.push(&euro[..1]), "");
        assert_eq!(d.push(&euro[1..2]), "");
        assert_eq!(d.push(&euro[2..]), "€");
        assert_eq!(d.push(&[0xFF, b'b']), "\u{FFFD}b");
        assert_eq!(d.push(&euro[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn byte_decoder_is_a_bijection() {
        let d = byte_decoder();
        assert_eq!(d.len(), 256);
        assert_eq!(d[&'\u{120}'], b' ');
        assert_eq!(d[&'a'], b'a');
    }

    proptest::proptest! {
        #[test]
        fn stream_decoding_any_split_equals_lossy_whole(s in "\\PC{0,24}", cuts in proptest::collection::vec(0usize..64, 0..8)) {
            let bytes = s.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut d = StreamDecoder::default();
            let mut out = String::new();
            let mut last = 0;
            for p in points {
                out.push_str(&d.push(&bytes[last..p]));
                last = p;
            }
            out.push_str(&d.push(&bytes[last..]));
            out.push_str(&d.finish());
            proptest::prop_assert_eq!(out, s);
        }
    }
}
