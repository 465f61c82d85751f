//! A tiny random-weight llama GGUF with its own small SentencePiece vocabulary, written
//! with candle's GGUF writer.
#![allow(dead_code, clippy::unwrap_used)] // reason: each test binary uses part of it; test helper

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

pub(crate) const HIDDEN: usize = 64;
pub(crate) const HEADS: usize = 4;
pub(crate) const KV_HEADS: usize = 2;
pub(crate) const FFN: usize = 128;
pub(crate) const LAYERS: usize = 2;
pub(crate) const CONTEXT: usize = 4096;

/// Words of the vocabulary after the specials and the 256 byte tokens.
pub(crate) const WORDS: &[&str] = &[
    "▁t", "▁th", "▁the", "▁c", "▁ca", "▁cat", "th", "at", "▁", "▁s", "▁sa", "▁sat", "▁o", "▁on",
    "▁m", "▁ma", "▁mat", "▁a", "▁d", "▁do", "▁dog",
];

/// Token ids: `<unk>` 0, `<s>` 1, `</s>` 2, `<0x00>`.. 3..259, words from 259.
pub(crate) const FIRST_WORD: u32 = 259;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn tensor(rng: &mut Rng, rows: usize, cols: usize, scale: f32, dtype: GgmlDType) -> QTensor {
    let data: Vec<f32> = (0..rows * cols).map(|_| rng.next() * scale).collect();
    let t = Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

fn ones(n: usize) -> QTensor {
    let t = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

/// The vocabulary: texts, scores, types.
pub(crate) fn vocabulary() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut texts = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        texts.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for w in WORDS {
        texts.push((*w).to_owned());
        types.push(1);
    }
    let scores = texts.iter().enumerate().map(|(i, _)| -(i as f32) / 100.0).collect();
    (texts, scores, types)
}

/// Write the model to `dir/tiny.gguf` with matrices in `dtype` (Q8_0 or Q4_1).
pub(crate) fn write_tiny_model(dir: &Path, dtype: GgmlDType, seed: u64) -> PathBuf {
    write_model(dir, dtype, seed, "llama")
}

/// Like [`write_tiny_model`] with another `general.architecture`.
pub(crate) fn write_model(dir: &Path, dtype: GgmlDType, seed: u64, arch: &str) -> PathBuf {
    let (texts, scores, types) = vocabulary();
    let vocab = texts.len();
    let mut rng = Rng(seed.max(1));
    let head_dim = HIDDEN / HEADS;
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(&mut rng, vocab, HIDDEN, 1.0, dtype)),
        ("output_norm.weight".into(), ones(HIDDEN)),
    ];
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}");
        tensors.push((n("attn_norm.weight"), ones(HIDDEN)));
        tensors.push((n("attn_q.weight"), tensor(&mut rng, HEADS * head_dim, HIDDEN, 0.3, dtype)));
        tensors
            .push((n("attn_k.weight"), tensor(&mut rng, KV_HEADS * head_dim, HIDDEN, 0.3, dtype)));
        tensors
            .push((n("attn_v.weight"), tensor(&mut rng, KV_HEADS * head_dim, HIDDEN, 0.3, dtype)));
        tensors.push((
            n("attn_output.weight"),
            tensor(&mut rng, HIDDEN, HEADS * head_dim, 0.3, dtype),
        ));
        tensors.push((n("ffn_norm.weight"), ones(HIDDEN)));
        tensors.push((n("ffn_gate.weight"), tensor(&mut rng, FFN, HIDDEN, 0.3, dtype)));
        tensors.push((n("ffn_up.weight"), tensor(&mut rng, FFN, HIDDEN, 0.3, dtype)));
        tensors.push((n("ffn_down.weight"), tensor(&mut rng, HIDDEN, FFN, 0.3, dtype)));
    }
    let u32v = |v: usize| Value::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let keys = [
        key("context_length"),
        key("embedding_length"),
        key("block_count"),
        key("feed_forward_length"),
        key("attention.head_count"),
        key("attention.head_count_kv"),
        key("attention.layer_norm_rms_epsilon"),
        key("rope.freq_base"),
    ];
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(arch.into())),
        ("general.name", Value::String("tiny".into())),
        (keys[0].as_str(), u32v(CONTEXT)),
        (keys[1].as_str(), u32v(HIDDEN)),
        (keys[2].as_str(), u32v(LAYERS)),
        (keys[3].as_str(), u32v(FFN)),
        (keys[4].as_str(), u32v(HEADS)),
        (keys[5].as_str(), u32v(KV_HEADS)),
        (keys[6].as_str(), Value::F32(1e-5)),
        (keys[7].as_str(), Value::F32(10_000.0)),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(texts.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
    ];
    let path = dir.join("tiny.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md, &ts).unwrap();
    path
}
