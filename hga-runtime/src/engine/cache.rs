//! The cache object an engine creates once per model: sequences, appends, batched decode attention.

use super::config::CacheConfig;
use super::cpu_backend::{CpuBackend, MODEL_GPU_BUDGET};
use super::telemetry::{StepTelemetry, Totals};
use crate::cpu::HeadLayout;
use crate::RuntimeError;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// A sequence handle, unique for the life of its cache (ids are never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// Which backend to create the cache on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The GPU when one is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU backend (reference semantics, f32, everything in host RAM).
    Cpu,
    /// The GPU backend on device `ordinal`; an error when it is not usable.
    Gpu {
        /// CUDA device ordinal.
        ordinal: usize,
    },
}

/// The backend a cache runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// [`crate::cpu`].
    Cpu,
    /// The CUDA offload runtime.
    Gpu,
}

#[derive(Debug)]
enum Backend {
    Cpu(CpuBackend),
    #[cfg(feature = "cuda")]
    Gpu(super::gpu_backend::GpuBackend),
}

/// K/V and summaries of every layer of every live sequence of one model, with HGA decode attention.
///
/// Every method checks its input completely before changing anything: on error the cache is as it was.
#[derive(Debug)]
pub struct HgaCache {
    config: CacheConfig,
    layout: HeadLayout,
    /// Tokens per layer of each live sequence.
    lens: BTreeMap<SeqId, Vec<usize>>,
    next_id: u64,
    /// Host bytes of the CPU backend's K/V (the GPU backend counts its pinned arena itself).
    host_used: u64,
    backend: Backend,
    totals: Totals,
}

impl HgaCache {
    /// Creates an empty cache. `Auto` picks the GPU when the crate was built with it and a device is
    /// usable, else the CPU.
    pub fn new(config: CacheConfig, choice: BackendChoice) -> Result<Self, RuntimeError> {
        config.validate()?;
        #[cfg(feature = "cuda")]
        let gpu = |ordinal| super::gpu_backend::GpuBackend::new(ordinal, &config).map(Backend::Gpu);
        let cpu = || -> Result<Backend, RuntimeError> {
            let budget = config.gpu_budget_bytes.unwrap_or(MODEL_GPU_BUDGET);
            let slots = working_set_slots(&config, budget, CpuBackend::record(&config.spec).bytes() as u64)?;
            Ok(Backend::Cpu(CpuBackend::new(config.spec.clone(), config.layers, slots)?))
        };
        let backend = match choice {
            BackendChoice::Cpu => cpu()?,
            #[cfg(feature = "cuda")]
            BackendChoice::Auto => match gpu(0) {
                Err(RuntimeError::NoGpu { .. }) => cpu()?,
                other => other?,
            },
            #[cfg(not(feature = "cuda"))]
            BackendChoice::Auto => cpu()?,
            #[cfg(feature = "cuda")]
            BackendChoice::Gpu { ordinal } => gpu(ordinal)?,
            #[cfg(not(feature = "cuda"))]
            BackendChoice::Gpu { .. } => {
                return Err(RuntimeError::NoGpu { reason: "hga-runtime was built without the `cuda` feature".into() })
            }
        };
        Ok(HgaCache {
            layout: config.layout(),
            config,
            lens: BTreeMap::new(),
            next_id: 0,
            host_used: 0,
            backend,
            totals: Totals::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        match self.backend {
            Backend::Cpu(_) => BackendKind::Cpu,
            #[cfg(feature = "cuda")]
            Backend::Gpu(_) => BackendKind::Gpu,
        }
    }

    /// The kernel parameters the GPU backend runs and where they came from (which tuned config and
    /// rule, or the built-in default); `None` on the CPU backend, which has no kernels.
    pub fn kernels(&self) -> Option<&hga_dsl::tuned::Resolved> {
        match &self.backend {
            Backend::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Backend::Gpu(g) => Some(g.resolved()),
        }
    }

    /// The GPU's name (`NVIDIA H200`); `None` on the CPU backend.
    pub fn device_name(&self) -> Option<&str> {
        match &self.backend {
            Backend::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Backend::Gpu(g) => Some(g.device_name()),
        }
    }

    /// Head counts.
    pub fn layout(&self) -> HeadLayout {
        self.layout
    }

    /// Live sequences, ascending.
    pub fn sequences(&self) -> Vec<SeqId> {
        self.lens.keys().copied().collect()
    }

    /// Tokens sequence `id` holds in `layer`.
    pub fn seq_len(&self, id: SeqId, layer: usize) -> Result<usize, RuntimeError> {
        self.check_layer(layer)?;
        Ok(self.lens(id)?[layer])
    }

    /// Host bytes the K/V store uses (on the GPU backend: its pinned arena blocks).
    pub fn host_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Cpu(_) => self.host_used,
            #[cfg(feature = "cuda")]
            Backend::Gpu(b) => b.host_bytes(),
        }
    }

    /// Totals over all steps so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Adds an empty sequence.
    pub fn add_sequence(&mut self) -> Result<SeqId, RuntimeError> {
        if self.lens.len() >= self.config.max_sequences {
            return Err(RuntimeError::CapacityExceeded {
                field: "sequences",
                requested: self.lens.len() + 1,
                limit: self.config.max_sequences,
            });
        }
        let id = SeqId(self.next_id);
        match &mut self.backend {
            Backend::Cpu(b) => b.add_sequence(id),
            #[cfg(feature = "cuda")]
            Backend::Gpu(b) => b.add_sequence(id)?,
        }
        self.next_id += 1;
        self.lens.insert(id, vec![0; self.config.layers]);
        Ok(id)
    }

    /// Removes a sequence and frees its memory.
    pub fn remove_sequence(&mut self, id: SeqId) -> Result<(), RuntimeError> {
        let lens = self.lens.remove(&id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?;
        self.host_used -= lens.iter().map(|&n| self.host_bytes_at(n)).sum::<u64>();
        match &mut self.backend {
            Backend::Cpu(b) => b.remove_sequence(id),
            #[cfg(feature = "cuda")]
            Backend::Gpu(b) => b.remove_sequence(id),
        }
        Ok(())
    }

    /// Appends `n` tokens of sequence `id` in `layer`: `k` and `v` are `[n][kv_heads][head_dim]` f32,
    /// keys after RoPE.
    pub fn append(&mut self, id: SeqId, layer: usize, k: &[f32], v: &[f32]) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        let len = self.lens(id)?[layer];
        let l = self.layout;
        let n = l.tokens("k", k, l.kv_heads)?;
        HeadLayout::exact("v", v, k.len())?;
        l.tokens("v", v, l.kv_heads)?;
        if len + n > self.config.max_seq_len {
            return Err(RuntimeError::CapacityExceeded {
                field: "sequence length",
                requested: len + n,
                limit: self.config.max_seq_len,
            });
        }
        let more = self.host_bytes_at(len + n) - self.host_bytes_at(len);
        if self.host_used + more > self.config.host_budget_bytes {
            return Err(RuntimeError::HostOutOfMemory {
                requested: more,
                used: self.host_used,
                budget: self.config.host_budget_bytes,
            });
        }
        match &mut self.backend {
            Backend::Cpu(b) => b.append(id, layer, k, v)?,
            #[cfg(feature = "cuda")]
            Backend::Gpu(b) => b.append(id, layer, k, v)?,
        }
        self.host_used += more;
        self.lens.get_mut(&id).expect("checked above")[layer] += n;
        Ok(())
    }

    /// Decode attention in `layer` for a batch: the newest token's query of each sequence in `seqs`
    /// (`q`: `[batch][q_heads][head_dim]`, after RoPE) into `out` (same shape). Each sequence must hold
    /// at least one token in `layer`, and appear once.
    pub fn attend(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &[f32],
        out: &mut [f32],
    ) -> Result<StepTelemetry, RuntimeError> {
        let t0 = Instant::now();
        self.check_batch(layer, seqs)?;
        let l = self.layout;
        HeadLayout::exact("q", q, seqs.len() * l.q_heads * l.head_dim)?;
        l.tokens("q", q, l.q_heads)?;
        HeadLayout::exact("out", out, q.len())?;
        let mut tel = StepTelemetry { sequences: seqs.len(), ..StepTelemetry::default() };
        match &mut self.backend {
            Backend::Cpu(b) => b.attend(layer, seqs, q, out, &mut tel)?,
            #[cfg(feature = "cuda")]
            Backend::Gpu(b) => b.attend(layer, seqs, q, out, &mut tel)?,
        }
        tel.stages.total = t0.elapsed();
        self.totals.add(&tel);
        Ok(tel)
    }

    /// Speculative prefetch for the coming decode step of `layer`: `q` (`[seqs][q_heads][head_dim]`,
    /// after RoPE) guesses each sequence's query for its next token in `layer`, e.g. the layer's query
    /// projection applied to the previous layer's hidden state after its attention (`hga-engine eval
    /// --speculate mid` measures how well that guesses on real text: 83% of the groups on tiny-code).
    ///
    /// The GPU backend routes the guess on a second stream of the highest priority, as of the tokens
    /// the layer holds now, and reads the groups it opens that miss into the layer's slot cache; it
    /// returns once that is queued, so call it before the work it should hide behind (the previous
    /// layer's MLP). The layer's next attend launches route, fetch and attend as separate kernels (not
    /// as its CUDA graph): its resolve waits for the prefetch's routing, its attention for the reads.
    /// It never changes what [`HgaCache::attend`] returns, only which groups hit (a wrong guess costs
    /// PCIe reads and slots). The CPU backend holds every group in host memory: it checks the input and
    /// does nothing. Sequences must be known and appear once.
    ///
    /// When it pays (BENCHMARKS.md, measured on an H100): only where the work it hides behind outlasts
    /// its routing (~50–65 µs at batch 1 beside an HBM-bound MLP, twice the routing alone) plus its
    /// reads (~0.16 µs per missed group of 8 KiB). Beside a dense 70B's MLP (~0.5 ms) it made layers
    /// 7.5–12% faster at real-text churn; beside Qwen3-30B-A3B's MoE layer (~40 µs) it made them slower.
    /// Time whole layers with `hga-bench --speculate-cos C --mlp-mb MB` before turning it on.
    pub fn prefetch(&mut self, layer: usize, seqs: &[SeqId], q: &[f32]) -> Result<(), RuntimeError> {
        self.check_prefetch(layer, seqs)?;
        let l = self.layout;
        HeadLayout::exact("q", q, seqs.len() * l.q_heads * l.head_dim)?;
        l.tokens("q", q, l.q_heads)?;
        match &mut self.backend {
            Backend::Cpu(_) => Ok(()),
            #[cfg(feature = "cuda")]
            Backend::Gpu(b) => b.prefetch(layer, seqs, q),
        }
    }

    /// [`HgaCache::prefetch`] with the guesses in a device buffer of bf16 bits
    /// (`[seqs][q_heads][head_dim]`). The GPU backend copies them into the layer's state on its own
    /// stream after the work queued on `q`'s stream, and that stream's later work waits only for the
    /// copy, not for the prefetch; their values are not checked for being finite. The CPU backend reads them back to check them, and does nothing.
    #[cfg(feature = "cuda")]
    pub fn prefetch_device(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &cudarc::driver::CudaSlice<u16>,
    ) -> Result<(), RuntimeError> {
        if let Backend::Cpu(_) = self.backend {
            return self.prefetch(layer, seqs, &device_to_f32("q", q)?);
        }
        self.check_prefetch(layer, seqs)?;
        let want = seqs.len() * self.layout.q_heads * self.layout.head_dim;
        if q.len() != want {
            let expected =
                format!("{want} ({} sequences × {} heads × {})", seqs.len(), self.layout.q_heads, self.layout.head_dim);
            return Err(RuntimeError::ShapeMismatch { field: "q", expected, got: q.len() });
        }
        match &mut self.backend {
            Backend::Gpu(b) => b.prefetch_device(layer, seqs, q),
            Backend::Cpu(_) => Ok(()),
        }
    }

    /// Checks the layer and sequences of a prefetch: known, each once (they may hold no token yet).
    fn check_prefetch(&self, layer: usize, seqs: &[SeqId]) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        let mut seen = HashSet::with_capacity(seqs.len());
        for &id in seqs {
            self.lens(id)?;
            if !seen.insert(id) {
                return Err(RuntimeError::DuplicateSequence { id: id.0 });
            }
        }
        Ok(())
    }

    /// Checks a batch of an attend call: the layer, each sequence known, once, with a token in `layer`.
    fn check_batch(&self, layer: usize, seqs: &[SeqId]) -> Result<(), RuntimeError> {
        self.check_layer(layer)?;
        let mut seen = HashSet::with_capacity(seqs.len());
        for &id in seqs {
            if !seen.insert(id) {
                return Err(RuntimeError::DuplicateSequence { id: id.0 });
            }
            if self.lens(id)?[layer] == 0 {
                return Err(RuntimeError::PositionOutOfRange { field: "pos", pos: 0, len: 0 });
            }
        }
        Ok(())
    }

    /// [`HgaCache::append`] from device buffers of bf16 bits (`[n][kv_heads][head_dim]`), on either
    /// backend. The GPU backend reads them in place (one block append; their values are not checked
    /// for being finite); the CPU backend stages them through host memory.
    #[cfg(feature = "cuda")]
    pub fn append_device(
        &mut self,
        id: SeqId,
        layer: usize,
        k: &cudarc::driver::CudaSlice<u16>,
        v: &cudarc::driver::CudaSlice<u16>,
    ) -> Result<(), RuntimeError> {
        if let Backend::Gpu(_) = self.backend {
            self.check_layer(layer)?;
            let len = self.lens(id)?[layer];
            let row = self.layout.kv_heads * self.layout.head_dim;
            if k.len() % row != 0 {
                let expected =
                    format!("a multiple of {} heads × {} = {row}", self.layout.kv_heads, self.layout.head_dim);
                return Err(RuntimeError::ShapeMismatch { field: "k", expected, got: k.len() });
            }
            if v.len() != k.len() {
                return Err(RuntimeError::ShapeMismatch { field: "v", expected: k.len().to_string(), got: v.len() });
            }
            let n = k.len() / row;
            if len + n > self.config.max_seq_len {
                return Err(RuntimeError::CapacityExceeded {
                    field: "sequence length",
                    requested: len + n,
                    limit: self.config.max_seq_len,
                });
            }
            if let Backend::Gpu(b) = &mut self.backend {
                b.append_device(id, layer, k, v)?;
            }
            self.lens.get_mut(&id).expect("checked above")[layer] += n;
            return Ok(());
        }
        let (k, v) = (device_to_f32("k", k)?, device_to_f32("v", v)?);
        self.append(id, layer, &k, &v)
    }

    /// [`HgaCache::attend`] with the queries and outputs in device buffers of bf16 bits
    /// (`[batch][q_heads][head_dim]` each). The GPU backend never moves them through the host: the
    /// kernels read `q` and write `out` in place, or device-to-device copies move them (see
    /// `GpuBackend::attend_device`); the values of `q` are not checked for being finite. Its work is
    /// ordered after what was queued on the buffers' streams, and their later work after it. With
    /// [`TelemetryLevel::Full`] it waits for the step (to read the telemetry back: one copy); with
    /// [`TelemetryLevel::Off`] it returns once the step is queued, `out` being complete in its stream's
    /// order. The CPU backend stages both through host memory. Bad input is an error before anything
    /// is queued (`out` untouched).
    ///
    /// [`TelemetryLevel::Full`]: super::TelemetryLevel::Full
    /// [`TelemetryLevel::Off`]: super::TelemetryLevel::Off
    #[cfg(feature = "cuda")]
    pub fn attend_device(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &cudarc::driver::CudaSlice<u16>,
        out: &mut cudarc::driver::CudaSlice<u16>,
    ) -> Result<StepTelemetry, RuntimeError> {
        let t0 = Instant::now();
        if let Backend::Cpu(_) = self.backend {
            let q = device_to_f32("q", q)?;
            if out.len() != q.len() {
                return Err(RuntimeError::ShapeMismatch {
                    field: "out",
                    expected: q.len().to_string(),
                    got: out.len(),
                });
            }
            let mut o = vec![0.0f32; q.len()];
            let tel = self.attend(layer, seqs, &q, &mut o)?;
            let bits: Vec<u16> = o.iter().map(|&x| crate::offload::f32_to_bf16(x)).collect();
            let stream = out.stream().clone();
            stream
                .memcpy_htod(&bits, out)
                .map_err(|e| RuntimeError::Cuda { op: "copy output", message: format!("{e:?}") })?;
            stream.synchronize().map_err(|e| RuntimeError::Cuda { op: "synchronize", message: format!("{e:?}") })?;
            return Ok(tel);
        }
        self.check_batch(layer, seqs)?;
        let want = seqs.len() * self.layout.q_heads * self.layout.head_dim;
        for (field, got) in [("q", q.len()), ("out", out.len())] {
            if got != want {
                let expected = format!(
                    "{want} ({} sequences × {} heads × {})",
                    seqs.len(),
                    self.layout.q_heads,
                    self.layout.head_dim
                );
                return Err(RuntimeError::ShapeMismatch { field, expected, got });
            }
        }
        let mut tel = StepTelemetry { sequences: seqs.len(), ..StepTelemetry::default() };
        if let Backend::Gpu(b) = &mut self.backend {
            b.attend_device(layer, seqs, q, out, &mut tel)?;
        }
        tel.stages.total = t0.elapsed();
        self.totals.add(&tel);
        Ok(tel)
    }

    fn lens(&self, id: SeqId) -> Result<&Vec<usize>, RuntimeError> {
        self.lens.get(&id).ok_or(RuntimeError::UnknownSequence { id: id.0 })
    }

    fn check_layer(&self, layer: usize) -> Result<(), RuntimeError> {
        if layer >= self.config.layers {
            return Err(RuntimeError::IndexOutOfRange { field: "layer", value: layer, limit: self.config.layers });
        }
        Ok(())
    }

    /// Host bytes one (sequence, layer) holds at `len` tokens on the CPU backend (the GPU backend's store
    /// grows by pinned group records and checks the budget itself).
    fn host_bytes_at(&self, len: usize) -> u64 {
        match &self.backend {
            Backend::Cpu(_) => CpuBackend::host_bytes(&self.config.spec, len),
            #[cfg(feature = "cuda")]
            Backend::Gpu(_) => 0,
        }
    }
}

/// Most distinct groups one step can route in one layer: every sequence, every KV head, the union of its
/// query heads' budgets (bounded by the groups a maximal sequence has).
pub(crate) fn max_groups_per_step(config: &CacheConfig) -> usize {
    let r = config.spec.routing();
    let units = if r.sharing == hga_dsl::Sharing::PerKvHead { 1 } else { config.spec.gqa() };
    let per_head = (r.top_groups as usize).saturating_mul(units).min(config.max_seq_len / r.group as usize);
    config.max_sequences * config.layout().kv_heads * per_head
}

/// Slots of `record_bytes` that `budget` holds; an error when that is fewer than one step can need.
pub(crate) fn working_set_slots(config: &CacheConfig, budget: u64, record_bytes: u64) -> Result<usize, RuntimeError> {
    let slots = (budget / record_bytes).min(1 << 31) as usize;
    let need = max_groups_per_step(config).max(1);
    if slots < need {
        return Err(RuntimeError::InvalidConfig {
            field: "gpu_budget_bytes",
            value: budget.to_string(),
            allowed: format!(
                "must hold the largest step's groups: {need} records of {record_bytes} bytes = {} bytes \
                 (max_sequences × kv_heads × min(top_groups × query heads per routing unit, max_seq_len / group))",
                need as u64 * record_bytes
            ),
        });
    }
    Ok(slots)
}

/// Copies a device buffer of bf16 bits to host f32 (synchronizes its stream).
#[cfg(feature = "cuda")]
fn device_to_f32(field: &'static str, buf: &cudarc::driver::CudaSlice<u16>) -> Result<Vec<f32>, RuntimeError> {
    let bits = buf.stream().clone_dtoh(buf).map_err(|e| RuntimeError::Cuda {
        op: if field == "q" { "copy q" } else { "copy k/v" },
        message: format!("{e:?}"),
    })?;
    Ok(bits.into_iter().map(crate::offload::bf16_to_f32).collect())
}
