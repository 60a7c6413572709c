//! A decode loop through the engine API, as an inference engine drives it: one [`HgaCache`] for the
//! model, a prefill appended as one block per layer, then per step and layer the new token's K/V
//! appended and its query attended, optionally with a speculative prefetch of the next layer (it pays
//! only where a layer's MLP outlasts it: BENCHMARKS.md) or a lookahead for each layer's next step
//! (`CacheConfig::lookahead`); telemetry per step and in total. Each layer's query drifts from step to
//! step (0.9 of the last plus 0.1 of fresh noise), as a decoder's do.
//!
//! `cargo run --release -p hga-runtime --example engine_decode [-- PRESET CONTEXT STEPS PREFETCH LOOKAHEAD LAYERS]`
//! (defaults: `qwen3-8b 16384 32 0 0 2`; `PREFETCH` 1 adds it; `LOOKAHEAD` `C,G` routes the lookahead C
//! chunks and G groups wider, `0` runs none). `ASYNC` (7th argument) 1 drives the GPU as an
//! asynchronous engine does: queries, outputs and the new tokens' K/V in device buffers
//! (`append_device`, `attend_device`) and `TelemetryLevel::Off`, so the host queues work ahead of the
//! GPU; it prints the wall time per token (all layers) instead of the telemetry. Runs on the GPU when one is usable (kernel parameters from the
//! checked-in tuned configs), else on the CPU backend. Keys, values and queries are random here; an
//! engine passes its own (keys after RoPE), as host slices or, on the GPU, as device buffers
//! (`append_device`, `attend_device`).

use hga_dsl::{presets, Spec};
use hga_runtime::cuda::Widening;
use hga_runtime::engine::{BackendChoice, BackendKind, CacheConfig, HgaCache, TelemetryLevel};
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("qwen3-8b", String::as_str);
    let context: usize = args.get(1).map_or(Ok(16384), |s| s.parse())?;
    let steps: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let prefetch = args.get(3).map_or(Ok(0), |s| s.parse::<u8>())? != 0;
    let lookahead = match args.get(4).map(String::as_str) {
        None | Some("0") => None,
        Some(w) => {
            let (c, g) = w.split_once(',').ok_or("LOOKAHEAD must be CHUNKS,GROUPS or 0")?;
            Some(Widening { extra_chunks: c.parse()?, extra_groups: g.parse()? })
        }
    };
    let layers: usize = args.get(5).map_or(Ok(2), |s| s.parse())?;
    let asynchronous = args.get(6).map_or(Ok(0), |s| s.parse::<u8>())? != 0;

    // The model's shape and the reference router; `hga_dsl::HfModel::from_file("config.json")?.shape`
    // reads a Hugging Face config instead of a preset.
    let spec = Spec::new(presets::find(preset)?.shape).validate()?;
    let config = CacheConfig::new(spec, layers, context + steps)
        // Kernel parameters tuned per GPU, context and batch (kernels-generated/configs).
        .with_tuned(kernels_generated::tuned::all()?)
        .with_lookahead(lookahead)
        .with_telemetry(if asynchronous { TelemetryLevel::Off } else { TelemetryLevel::Full });
    let mut cache = HgaCache::new(config, BackendChoice::Auto)?;
    println!("{preset}: backend {:?} ({})", cache.backend(), cache.device_name().unwrap_or("host"));
    if let Some(k) = cache.kernels() {
        println!("kernel parameters: {:?} (from {})", k.spec.kernel(), k.source);
    }

    let l = cache.layout();
    let (kv_row, q_row) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };

    let seq = cache.add_sequence()?;
    // Prefill: the prompt's keys and values of each layer in one append (`[tokens][kv_heads][head_dim]`).
    for layer in 0..layers {
        cache.append(seq, layer, &random(context * kv_row), &random(context * kv_row))?;
    }
    if asynchronous && cache.backend() == BackendKind::Gpu {
        return decode_async(&mut cache, seq, layers, steps, q_row, kv_row);
    }
    // Decode: each step appends the new token to every layer and attends its query there.
    let mut out = vec![0.0f32; q_row];
    let mut queries: Vec<Vec<f32>> = (0..layers).map(|_| random(q_row)).collect();
    for step in 0..steps {
        for q in queries.iter_mut() {
            let noise = random(q_row);
            q.iter_mut().zip(noise).for_each(|(x, n)| *x = 0.9 * *x + 0.1 * n);
        }
        for layer in 0..layers {
            cache.append(seq, layer, &random(kv_row), &random(kv_row))?;
            let t = cache.attend(layer, &[seq], &queries[layer], &mut out)?;
            // Speculative prefetch of the next layer, queued before this layer's MLP so that its reads
            // overlap it. An engine guesses the next layer's query, e.g. its q projection applied to
            // this layer's hidden state after attention; here the guess is the query itself.
            if prefetch && layer + 1 < layers {
                cache.prefetch(layer + 1, &[seq], &queries[layer + 1])?;
            }
            if step + 1 == steps && layer == 0 {
                println!(
                    "last step, layer 0: {} tokens attended of {} visible per head, hit rate {}, {} bytes host → device, {:?}",
                    t.attended_tokens / l.q_heads as u64,
                    context + step + 1,
                    t.hit_rate().map_or("-".into(), |h| format!("{:.1}%", 100.0 * h)),
                    t.bytes_h2d,
                    t.stages.total
                );
            }
        }
    }
    let totals = cache.totals();
    println!(
        "{} attend calls: {} hits, {} misses, {} bytes host → device, {:?} on the host",
        totals.steps, totals.hits, totals.misses, totals.bytes_h2d, totals.stages.total
    );
    assert!(out.iter().all(|x| x.is_finite()));
    Ok(())
}

/// The decode loop with device buffers and no telemetry: the host queues every layer's append and
/// attend without waiting, as an asynchronous engine does; wall time per token over the steps.
fn decode_async(
    cache: &mut HgaCache,
    seq: hga_runtime::engine::SeqId,
    layers: usize,
    steps: usize,
    q_row: usize,
    kv_row: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let gpu = hga_runtime::cuda::Gpu::open(0)?;
    let st = gpu.stream();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut bits = |n: usize| -> Vec<u16> {
        (0..n).map(|_| half::bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_bits()).collect()
    };
    let (k, v) = (st.clone_htod(&bits(kv_row))?, st.clone_htod(&bits(kv_row))?);
    // Per layer and step a query, drifting from step to step (made before timing).
    let qs: Vec<Vec<_>> = (0..layers)
        .map(|_| {
            let mut q: Vec<f32> = (0..q_row).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            (0..steps)
                .map(|_| {
                    q.iter_mut().for_each(|x| *x = 0.9 * *x + 0.1 * rng.random_range(-1.0f32..1.0));
                    st.clone_htod(&q.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect::<Vec<_>>())
                })
                .collect::<Result<_, _>>()
        })
        .collect::<Result<_, _>>()?;
    let mut out = st.alloc_zeros::<u16>(q_row)?;
    let warm = steps.min(8);
    let mut t0 = std::time::Instant::now();
    for step in 0..steps {
        if step == warm {
            st.synchronize()?;
            t0 = std::time::Instant::now();
        }
        for (layer, q) in qs.iter().enumerate() {
            cache.append_device(seq, layer, &k, &v)?;
            cache.attend_device(layer, &[seq], &q[step], &mut out)?;
        }
    }
    let o = st.clone_dtoh(&out)?;
    let per_token = t0.elapsed().as_secs_f64() * 1e6 / (steps - warm).max(1) as f64;
    println!(
        "async: {:.1} µs per token over {} layers ({:.1} µs per layer), {} steps timed",
        per_token,
        layers,
        per_token / layers as f64,
        steps - warm
    );
    assert!(o.iter().all(|&x| half::bf16::from_bits(x).to_f32().is_finite()));
    Ok(())
}
