//! The engine: a loaded model, its tokenizer and template, and one scheduler thread
//! that runs every sequence on the engine's own rayon pool.
//!
//! The scheduler admits up to `max_concurrent` sequences and lets `max_queue` more
//! wait; beyond that [`Engine::submit`] refuses at once with [`Error::Overloaded`].
//! Continuous batching: every step is one batched forward pass over all active
//! sequences (each decoding sequence's next token, each new sequence's next prompt
//! chunk), so the weights are read once per step for all of them; sequences join after
//! admission and leave between steps, each with its own KV cache and position. Each sequence streams [`Event`]s over its
//! own channel and is dropped, freeing its slot, as soon as that channel's receiver is.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::metrics as m;
use crate::model::{KvCache, Model, Segment};
use crate::paths::default_model_path;
use crate::quant::Formats;
use crate::sampling::{Sampler, SamplingParams, StopMatcher, StopOutcome};
use crate::settings::InferenceSettings;
use crate::template::{ChatTemplate, TemplateMessage};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// A loaded model ready to generate. Cheap to clone; the scheduler thread stops when
/// the last clone is dropped and no sequence is running.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    commands: std_mpsc::Sender<Command>,
}

/// Facts about the loaded model.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The id clients use.
    pub id: String,
    /// The GGUF file.
    pub path: PathBuf,
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// Context window in tokens used for requests.
    pub context_size: usize,
    /// The model's trained context length.
    pub trained_context: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Layers, hidden size.
    pub layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Weight formats after load, e.g. `Q8_0 x 211`.
    pub weight_types: String,
    /// Compute threads.
    pub threads: usize,
    /// How long loading took.
    pub load_time: Duration,
    /// Whether the file's chat template is used (false: ChatML).
    pub has_chat_template: bool,
}

/// A snapshot of the scheduler's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Sequences being generated.
    pub running: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Tokens generated since load.
    pub tokens_generated: u64,
    /// Batched forward passes (scheduler steps) since load.
    pub steps: u64,
    /// Sequences advanced since load, summed over steps: `sequence_steps / steps` is
    /// the mean batch (continuous batching shares each step among the active
    /// sequences).
    pub sequence_steps: u64,
}

/// What to generate from.
#[derive(Clone, Debug)]
pub enum Input {
    /// Raw text (a completion prompt). A BOS token is added if the model wants one.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatTurn>),
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatTurn {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The prompt.
    pub input: Input,
    /// Generation limit; `None` uses the settings' `default_max_tokens` (always capped
    /// by the context window).
    pub max_tokens: Option<usize>,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop sequences: generation ends before any of them, which is never emitted.
    pub stop: Vec<String>,
    /// Never end on an end-of-generation token (benchmarks): their logits are masked.
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-generation token or stop sequence.
    Stop,
    /// `max_tokens` or the context window reached.
    Length,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (including the end-of-generation token, if any, as OpenAI
    /// servers count it).
    pub completion_tokens: usize,
}

/// How a finished request went.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: TokenUsage,
    /// Time from admission to the first generated token.
    pub time_to_first_token: Duration,
    /// Time spent generating after the first token.
    pub decode_time: Duration,
}

/// What a running generation reports, in order: `Started`, any number of `Text`, then
/// `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    /// The prompt was accepted: its size in tokens.
    Started {
        /// Prompt tokens.
        prompt_tokens: usize,
    },
    /// Generated text, valid UTF-8, never containing a stop sequence.
    Text(String),
    /// The end.
    Done(Finished),
    /// The request failed (context length, internal error).
    Error(Error),
}

/// A running generation: a stream of [`Event`]s. Dropping it cancels the generation
/// within one token.
#[derive(Debug)]
pub struct Generation {
    events: mpsc::UnboundedReceiver<Event>,
}

/// A whole generation, collected.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// The text.
    pub text: String,
    /// How it ended.
    pub finished: Finished,
}

struct Shared {
    model: Arc<Model>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    info: ModelInfo,
    settings: InferenceSettings,
    /// Admitted requests not yet finished (running + waiting).
    pending: AtomicUsize,
    running: AtomicUsize,
    tokens_generated: AtomicU64,
    steps: AtomicU64,
    sequence_steps: AtomicU64,
    /// EWMA of request durations in milliseconds, for the retry hint.
    avg_request_ms: AtomicU64,
}

enum Command {
    Generate {
        request: GenerateRequest,
        events: mpsc::UnboundedSender<Event>,
    },
    /// Sent by [`Engine::is_running`] to see whether the thread still receives.
    Probe,
}

struct Sequence {
    events: mpsc::UnboundedSender<Event>,
    tokens: Vec<u32>,
    prompt_len: usize,
    cache: KvCache,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopMatcher,
    max_tokens: usize,
    ignore_eos: bool,
    generated: usize,
    admitted: Instant,
    first_token: Option<Instant>,
}

enum Step {
    Continue,
    /// Ended without a result to report (cancelled, or an error already sent).
    Finished,
    /// Ended normally; the scheduler frees the slot, then sends this.
    Done(Finished),
}

impl Engine {
    /// Load the model `settings` names and start the scheduler thread. Blocking: call
    /// it from a plain thread or `spawn_blocking`.
    pub fn load(settings: &InferenceSettings) -> Result<Engine> {
        let started = Instant::now();
        let path = settings.model_path.clone().unwrap_or_else(default_model_path);
        if !path.exists() {
            return Err(Error::ModelNotFound { path: path.display().to_string() });
        }
        let threads = settings.resolved_threads();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("switchyard-infer-{i}"))
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the compute pool: {e}")))?;
        let file = GgufFile::open(&path)?;
        let options = Formats {
            requantize: settings.requantize,
            fast: settings.fast_kernels,
            compact_q4_1: settings.compact_q4_1,
        };
        // Loading (requantisation) may use every core: it happens once, before serving.
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let model = if cores > threads {
            rayon::ThreadPoolBuilder::new().num_threads(cores).build().map_or_else(
                |_| pool.install(|| Model::load(&file, options)),
                |p| p.install(|| Model::load(&file, options)),
            )?
        } else {
            pool.install(|| Model::load(&file, options))?
        };
        let weights_loaded = started.elapsed();
        let tokenizer = Tokenizer::from_gguf(&file)?;
        tracing::debug!(?weights_loaded, tokenizer_built = ?started.elapsed(), "load phases");
        if tokenizer.vocab_size() > model.config.vocab {
            return Err(Error::Model(format!(
                "the tokenizer has {} tokens but the embedding table {}",
                tokenizer.vocab_size(),
                model.config.vocab
            )));
        }
        let text_of = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default().to_owned()
        };
        let template_src = file.str("tokenizer.chat_template");
        let template = ChatTemplate::new(
            template_src,
            &text_of(tokenizer.bos()),
            &text_of(tokenizer.eos()),
        )
        .or_else(|e| {
            tracing::warn!(error = %e, "the model's chat template does not compile; using ChatML");
            ChatTemplate::new(None, &text_of(tokenizer.bos()), &text_of(tokenizer.eos()))
        })?;
        let trained = model.config.context_length;
        let context_size = if settings.context_size == 0 { trained } else { settings.context_size };
        let architecture = file.str("general.architecture").unwrap_or_default().to_owned();
        let name = file.str("general.name").map(str::to_owned);
        drop(file);
        let load_time = started.elapsed();
        let info = ModelInfo {
            id: settings.model_id.clone().unwrap_or_else(|| model_id_from_path(&path)),
            path,
            architecture,
            name,
            context_size,
            trained_context: trained,
            vocab_size: model.config.vocab,
            layers: model.config.layers,
            hidden_size: model.config.hidden,
            weight_types: model.weight_types(),
            threads,
            load_time,
            has_chat_template: template.from_file,
        };
        m::describe();
        metrics::gauge!(m::LOAD_SECONDS).set(load_time.as_secs_f64());
        tracing::info!(
            model = %info.id,
            arch = %info.architecture,
            threads,
            weights = %info.weight_types,
            kernels = kernel_name(settings.fast_kernels),
            load_ms = load_time.as_millis(),
            "local model loaded"
        );
        let shared = Arc::new(Shared {
            model: Arc::new(model),
            tokenizer,
            template,
            info,
            settings: settings.clone(),
            pending: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            tokens_generated: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            sequence_steps: AtomicU64::new(0),
            avg_request_ms: AtomicU64::new(2_000),
        });
        let (commands, inbox) = std_mpsc::channel();
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("switchyard-scheduler".into())
            .spawn(move || scheduler(&worker, &pool, &inbox))
            .map_err(|e| Error::Internal(format!("cannot start the scheduler thread: {e}")))?;
        Ok(Engine { shared, commands })
    }

    /// Facts about the loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The id clients use in `model`.
    pub fn model_id(&self) -> &str {
        &self.shared.info.id
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }

    /// The prompt text a conversation renders to.
    pub fn render_chat(&self, turns: &[ChatTurn]) -> Result<String> {
        let messages: Vec<TemplateMessage> = turns
            .iter()
            .map(|t| TemplateMessage { role: t.role.clone(), content: t.content.clone() })
            .collect();
        self.shared.template.render(&messages, None)
    }

    /// The prompt tokens of a request, exactly as generation would see them.
    pub fn prompt_tokens(&self, input: &Input) -> Result<Vec<u32>> {
        self.shared.tokenize(input)
    }

    /// The scheduler's current load.
    pub fn stats(&self) -> EngineStats {
        let s = &self.shared;
        EngineStats {
            running: s.running.load(Ordering::Acquire),
            queued: s.queued(),
            tokens_generated: s.tokens_generated.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            sequence_steps: s.sequence_steps.load(Ordering::Relaxed),
        }
    }

    /// Whether the scheduler thread is alive.
    pub fn is_running(&self) -> bool {
        self.commands.send(Command::Probe).is_ok()
    }

    /// Start generating. Never blocks: the prompt is tokenized on the scheduler thread,
    /// and a context-length error arrives as the first event. Fails at once with
    /// [`Error::Overloaded`] when the queue is full.
    pub fn submit(&self, request: GenerateRequest) -> Result<Generation> {
        let s = &self.shared;
        let limit = s.settings.max_concurrent.max(1) + s.settings.max_queue;
        let admitted = s
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| (p < limit).then_some(p + 1));
        if admitted.is_err() {
            metrics::counter!(m::REJECTED).increment(1);
            let running = s.running.load(Ordering::Acquire);
            let queued = s.pending.load(Ordering::Acquire).saturating_sub(running);
            return Err(Error::Overloaded { running, queued, retry_after: s.retry_hint(queued) });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        if self.commands.send(Command::Generate { request, events: tx }).is_err() {
            s.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::EngineStopped);
        }
        metrics::gauge!(m::QUEUE_DEPTH).set(s.queued() as f64);
        Ok(Generation { events: rx })
    }

    /// Generate to the end on the calling thread (blocking; not for async code).
    pub fn generate(&self, request: GenerateRequest) -> Result<Output> {
        let mut generation = self.submit(request)?;
        let mut text = String::new();
        while let Some(event) = generation.blocking_next() {
            match event {
                Event::Started { .. } => {}
                Event::Text(t) => text.push_str(&t),
                Event::Done(finished) => return Ok(Output { text, finished }),
                Event::Error(e) => return Err(e),
            }
        }
        Err(Error::EngineStopped)
    }
}

impl Generation {
    /// The next event; `None` after `Done`/`Error` (or if the engine died).
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event, blocking the thread. Must not be called from async code.
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// Poll for the next event (for hand-written streams).
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

impl Shared {
    fn queued(&self) -> usize {
        self.pending.load(Ordering::Acquire).saturating_sub(self.running.load(Ordering::Acquire))
    }

    fn retry_hint(&self, queued: usize) -> Duration {
        let avg = self.avg_request_ms.load(Ordering::Relaxed);
        let slots = self.settings.max_concurrent.max(1) as u64;
        let ms = avg.saturating_mul(queued as u64 + 1) / slots;
        Duration::from_secs((ms / 1000).clamp(1, 60))
    }

    fn tokenize(&self, input: &Input) -> Result<Vec<u32>> {
        match input {
            Input::Text(text) => self.tokenizer.encode(text, true),
            Input::Tokens(ids) => {
                let vocab = self.model.config.vocab;
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
                    return Err(Error::InvalidRequest(format!(
                        "token id {bad} is outside the vocabulary (size {vocab})"
                    )));
                }
                Ok(ids.clone())
            }
            Input::Chat(turns) => {
                let messages: Vec<TemplateMessage> = turns
                    .iter()
                    .map(|t| TemplateMessage { role: t.role.clone(), content: t.content.clone() })
                    .collect();
                let text = self.template.render(&messages, None)?;
                self.tokenizer.encode(&text, true)
            }
        }
    }

    fn admit(
        &self,
        request: GenerateRequest,
        events: mpsc::UnboundedSender<Event>,
    ) -> Option<Sequence> {
        let tokens = match self.tokenize(&request.input) {
            Ok(t) => t,
            Err(e) => {
                let _ = events.send(Event::Error(e));
                return None;
            }
        };
        let context = self.info.context_size;
        if tokens.is_empty() {
            let _ = events.send(Event::Error(Error::InvalidRequest("the prompt is empty".into())));
            return None;
        }
        if tokens.len() >= context {
            let _ = events
                .send(Event::Error(Error::ContextLengthExceeded { prompt: tokens.len(), context }));
            return None;
        }
        let room = context - tokens.len();
        let max_tokens = request.max_tokens.unwrap_or(self.settings.default_max_tokens).min(room);
        if max_tokens == 0 {
            let _ = events
                .send(Event::Error(Error::InvalidRequest("max_tokens must be at least 1".into())));
            return None;
        }
        if events.send(Event::Started { prompt_tokens: tokens.len() }).is_err() {
            return None;
        }
        metrics::counter!(m::PROMPT_TOKENS).increment(tokens.len() as u64);
        Some(Sequence {
            prompt_len: tokens.len(),
            tokens,
            cache: self.model.new_cache(),
            sampler: Sampler::new(request.sampling),
            decoder: self.tokenizer.stream_decoder(),
            stop: StopMatcher::new(request.stop),
            max_tokens,
            ignore_eos: request.ignore_eos,
            generated: 0,
            admitted: Instant::now(),
            first_token: None,
            events,
        })
    }

    /// One step of continuous batching: every active sequence advances together, by
    /// its next token (decoding) or its next prompt chunk, in one batched forward pass
    /// ([`Model::forward_batch`]). Prompt chunks share a budget of `prompt_budget`
    /// tokens per step, first come first served (a sequence left without budget waits
    /// for the next step), so a step's latency stays bounded for the decoding
    /// sequences. Returns one [`Step`] per sequence, in order. Sequences whose receiver
    /// is gone are left out of the pass.
    fn step_all(&self, active: &mut [Sequence], prompt_budget: usize) -> Vec<Step> {
        let mut steps: Vec<Step> = Vec::with_capacity(active.len());
        let mut batch: Vec<(usize, bool)> = Vec::with_capacity(active.len());
        let mut segments: Vec<Segment<'_>> = Vec::with_capacity(active.len());
        let mut budget = prompt_budget.max(1);
        for (i, seq) in active.iter_mut().enumerate() {
            if seq.events.is_closed() {
                steps.push(Step::Finished);
                continue;
            }
            steps.push(Step::Continue);
            let done = seq.cache.len();
            let remaining = seq.tokens.len() - done;
            let take = if remaining == 1 { 1 } else { remaining.min(budget) };
            if take == 0 {
                continue;
            }
            if remaining > 1 {
                budget -= take;
            }
            let end = done + take;
            let last = end == seq.tokens.len();
            batch.push((i, last));
            segments.push(Segment {
                tokens: &seq.tokens[done..end],
                cache: &mut seq.cache,
                logits: last,
            });
        }
        if segments.is_empty() {
            return steps;
        }
        metrics::histogram!(m::BATCH_SEQUENCES).record(segments.len() as f64);
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.sequence_steps.fetch_add(segments.len() as u64, Ordering::Relaxed);
        let result = self.model.forward_batch(&mut segments);
        drop(segments);
        match result {
            Ok(logits) => {
                for ((i, last), logits) in batch.into_iter().zip(logits) {
                    if last {
                        steps[i] = self.sample(&mut active[i], logits);
                    }
                }
            }
            Err(e) => {
                // A failed pass fails every sequence in it (the error is internal: the
                // inputs were checked on admission).
                tracing::error!(error = %e, sequences = batch.len(), "batched forward pass failed");
                for (i, _) in batch {
                    let _ = active[i].events.send(Event::Error(Error::Internal(e.to_string())));
                    steps[i] = Step::Finished;
                }
            }
        }
        steps
    }

    /// Pick a sequence's next token from its logits and report it.
    fn sample(&self, seq: &mut Sequence, mut logits: Vec<f32>) -> Step {
        if seq.ignore_eos {
            for &id in self.tokenizer.end_of_generation() {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        let token = seq.sampler.sample(&mut logits, &seq.tokens);
        seq.generated += 1;
        self.tokens_generated.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::TOKENS_GENERATED).increment(1);
        let now = Instant::now();
        if seq.first_token.is_none() {
            seq.first_token = Some(now);
            metrics::histogram!(m::TIME_TO_FIRST_TOKEN).record((now - seq.admitted).as_secs_f64());
        }
        if self.tokenizer.is_end_of_generation(token) {
            return self.finish(seq, FinishReason::Stop, String::new());
        }
        seq.tokens.push(token);
        let text = seq.decoder.push(self.tokenizer.token_bytes(token));
        match seq.stop.push(&text) {
            StopOutcome::Stop(before) => return self.finish(seq, FinishReason::Stop, before),
            StopOutcome::Continue(out) => {
                if !out.is_empty() && seq.events.send(Event::Text(out)).is_err() {
                    return Step::Finished;
                }
            }
        }
        if seq.generated >= seq.max_tokens || seq.tokens.len() >= self.info.context_size {
            let tail = seq.decoder.finish();
            let text = match seq.stop.push(&tail) {
                StopOutcome::Stop(before) => return self.finish(seq, FinishReason::Stop, before),
                StopOutcome::Continue(out) => out + &seq.stop.finish(),
            };
            return self.finish(seq, FinishReason::Length, text);
        }
        Step::Continue
    }

    fn finish(&self, seq: &mut Sequence, reason: FinishReason, mut text: String) -> Step {
        if reason == FinishReason::Stop && text.is_empty() {
            // An end-of-generation token: release held text (no stop sequence matched).
            let tail = seq.decoder.finish();
            text = match seq.stop.push(&tail) {
                StopOutcome::Stop(before) => before,
                StopOutcome::Continue(out) => out + &seq.stop.finish(),
            };
        }
        if !text.is_empty() {
            let _ = seq.events.send(Event::Text(text));
        }
        let now = Instant::now();
        let first = seq.first_token.unwrap_or(now);
        let decode_time = now - first;
        if seq.generated > 1 && decode_time > Duration::ZERO {
            #[allow(clippy::cast_precision_loss)]
            let rate = (seq.generated - 1) as f64 / decode_time.as_secs_f64();
            metrics::histogram!(m::TOKENS_PER_SECOND).record(rate);
        }
        let total_ms = u64::try_from((now - seq.admitted).as_millis()).unwrap_or(u64::MAX);
        let old = self.avg_request_ms.load(Ordering::Relaxed);
        self.avg_request_ms.store((old * 7 + total_ms) / 8, Ordering::Relaxed);
        Step::Done(Finished {
            finish_reason: reason,
            usage: TokenUsage { prompt_tokens: seq.prompt_len, completion_tokens: seq.generated },
            time_to_first_token: first - seq.admitted,
            decode_time,
        })
    }
}

/// Which matrix kernels a load with `fast_kernels` runs: ours at the CPU's level, or
/// candle's (asked for, or no SIMD level of ours on this CPU).
fn kernel_name(fast_kernels: bool) -> &'static str {
    match crate::kernels::level() {
        crate::kernels::Level::Portable => "candle",
        level if fast_kernels => level.name(),
        _ => "candle",
    }
}

/// `pool.install(f)` with the pool's other workers kept looking for work until `f`
/// returns, so the ~150 parallel regions of a decode step find them awake instead of
/// each waking a parked thread. Idle, they yield the CPU to anything else runnable.
fn install_awake<R: Send>(pool: &rayon::ThreadPool, f: impl FnOnce() -> R + Send) -> R {
    let others = pool.current_num_threads().saturating_sub(1);
    if others == 0 {
        return pool.install(f);
    }
    pool.install(|| {
        let done = AtomicBool::new(false);
        let home = rayon::current_thread_index();
        rayon::in_place_scope(|scope| {
            for _ in 0..others {
                scope.spawn(|_| {
                    // Taken back by the thread running `f` while it waited inside `f`:
                    // keeping it here would stall `f` below on the same stack.
                    if rayon::current_thread_index() == home {
                        return;
                    }
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::thread::yield_now();
                        }
                    }
                });
            }
            let result = f();
            done.store(true, Ordering::Release);
            result
        })
    })
}

/// The scheduler loop: admit, then step every active sequence once, until the engine
/// is dropped and nothing is left to do.
fn scheduler(shared: &Shared, pool: &rayon::ThreadPool, inbox: &std_mpsc::Receiver<Command>) {
    let max_active = shared.settings.max_concurrent.max(1);
    let batch = shared.settings.batch_size.max(1);
    let mut waiting: VecDeque<(GenerateRequest, mpsc::UnboundedSender<Event>)> = VecDeque::new();
    let mut active: Vec<Sequence> = Vec::new();
    let mut open = true;
    loop {
        if active.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            match inbox.recv() {
                Ok(cmd) => accept(cmd, &mut waiting),
                Err(_) => return,
            }
        }
        loop {
            match inbox.try_recv() {
                Ok(cmd) => accept(cmd, &mut waiting),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        while active.len() < max_active {
            let Some((request, events)) = waiting.pop_front() else { break };
            if events.is_closed() {
                shared.pending.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            match pool.install(|| shared.admit(request, events)) {
                Some(seq) => {
                    active.push(seq);
                    shared.running.fetch_add(1, Ordering::AcqRel);
                }
                None => {
                    shared.pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        metrics::gauge!(m::QUEUE_DEPTH).set(waiting.len() as f64);
        metrics::gauge!(m::ACTIVE_SEQUENCES).set(active.len() as f64);
        // Prompt tokens per step: fewer while others decode, so they are not stalled long.
        let chunk = if active.len() > 1 { batch.min(64) } else { batch };
        let steps = install_awake(pool, || shared.step_all(&mut active, chunk));
        // Back to front, so `swap_remove` only moves sequences already handled.
        for (i, step) in steps.into_iter().enumerate().rev() {
            match step {
                Step::Continue => {}
                Step::Finished => {
                    active.swap_remove(i);
                    shared.running.fetch_sub(1, Ordering::AcqRel);
                    shared.pending.fetch_sub(1, Ordering::AcqRel);
                }
                Step::Done(finished) => {
                    // Free the slot first, so a client that sends its next request as
                    // soon as it sees `Done` finds room.
                    let seq = active.swap_remove(i);
                    shared.running.fetch_sub(1, Ordering::AcqRel);
                    shared.pending.fetch_sub(1, Ordering::AcqRel);
                    let _ = seq.events.send(Event::Done(finished));
                }
            }
        }
    }
}

fn accept(cmd: Command, waiting: &mut VecDeque<(GenerateRequest, mpsc::UnboundedSender<Event>)>) {
    match cmd {
        Command::Generate { request, events } => waiting.push_back((request, events)),
        Command::Probe => {}
    }
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`.
fn model_id_from_path(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("local-model");
    match stem.rsplit_once('.') {
        Some((base, quant)) if looks_like_quant(quant) => base.to_owned(),
        _ => stem.to_owned(),
    }
}

fn looks_like_quant(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    ["Q2", "Q3", "Q4", "Q5", "Q6", "Q8", "F16", "F32", "BF16", "IQ"]
        .iter()
        .any(|p| upper.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_drop_the_quantisation_suffix() {
        assert_eq!(
            model_id_from_path(Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(
            model_id_from_path(Path::new("tinyllama-1.1b-chat.Q4_K_M.gguf")),
            "tinyllama-1.1b-chat"
        );
        assert_eq!(model_id_from_path(Path::new("model.gguf")), "model");
        assert_eq!(model_id_from_path(Path::new("llama-3.2-1b.gguf")), "llama-3.2-1b");
    }
}
