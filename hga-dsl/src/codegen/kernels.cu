// ---------------------------------------------------------------------------------------------------
// Kernels of one decode step (DESIGN.md §2). Everything above this line is the generated prelude: the
// compile-time constants of the variant. Layouts (row-major, B = sequences (rows) of the batch):
//   q          [B][QH][D] elem            out        [B][QH][D] elem
//   win_k/v    [B][KVH][WIN_CHUNKS*C][D]  window: chunk c < KF in slot c, else slot KF + c % (KL+1)
//   chunk_sum  [B][KVH][cap_chunks][SV*D] bf16      group_sum [B][KVH][cap_groups][SV*D] bf16
//   group_addr [B][KVH][cap_groups] device address of the group's host record (G keys then G values,
//              2*G*D elem; group-contiguous, DESIGN.md §3), 0 where the group has no record
//   slots      [B*KVH][part_slots][2][G][D] elem: each (row, KV head) owns a partition of the slot cache
//   slot_of    [B][KVH][cap_groups] slot in the partition, -1 if not cached
// A row whose pos is < 0 sits the step out: every kernel leaves its state and output untouched.
// ---------------------------------------------------------------------------------------------------

typedef unsigned short elem_t;
typedef unsigned short bf16_t;

struct HgaParams {
    const int* pos;           // [B] position of this step's query (tokens 0..=pos exist); < 0: inactive
    elem_t* win_k;
    elem_t* win_v;
    bf16_t* chunk_sum;
    bf16_t* group_sum;
    const elem_t* q;
    float* chunk_score;       // [B][QH][cap_chunks] candidate order
    float* chunk_mass;        // [B][KVH][cap_chunks] (shared routing)
    int* sel_chunk;           // [B][UNITS][kce] selected global chunk indices, ascending
    int* n_sel_chunk;         // [B][UNITS]
    int* group_cand;          // [B][UNITS][kce*GPC] candidate groups, ascending
    float* group_score;       // [B][QH][kce*GPC]
    float* group_mass;        // [B][KVH][kce*GPC]
    int* sel_group;           // [B][UNITS][kge] opened global group indices, ascending
    int* n_sel_group;         // [B][UNITS]
    int* uni_group;           // [B][KVH][ucap] union of the KV head's opened groups
    int* uni_slot;            // [B][KVH][ucap] hit: slot; miss: -(slot + 1), filled by hga_attend;
                              //   miss without a free slot: NO_SLOT (attended straight from host memory)
    unsigned* uni_mask;       // [B][KVH][ucap][MW] query heads (of the KV head) that opened it
    int* n_uni;               // [B][KVH]
    int* n_att;               // [B][KVH] tokens attended by the last step (telemetry)
    int* slot_of;             // [B][KVH][cap_groups]
    int* slot_owner;          // [B*KVH][part_slots] group cached in the slot, or -1
    int* slot_stamp;          // [B*KVH][part_slots] step that last used the slot
    int* part_state;          // [B*KVH][4]: step id, clock hand, misses of the last step, misses
                              //   left without a slot (read from host, not cached)
    int* miss_list;           // [B][KVH][ucap] scratch: union entries that missed, past the resolve's
                              //   shared memory (RESOLVE_SMEM)
    const unsigned long long* group_addr;
    elem_t* slots;
    float* part_ml;           // [B][QH][SK][2] running max and sum of each split
    float* part_acc;          // [B][QH][SK][D] unnormalized output of each split
    int* done;                // [B][KVH*HTILES] finished splits (the last one merges), then [B][KVH]
                              //   finished units of hga_select (the last one resolves); reset to 0
    int* error;               // [0] routed groups that had no host record (read as absent)
    elem_t* out;
    int batch;
    int cap_chunks;           // chunk capacity per sequence
    int cap_groups;           // = cap_chunks * GPC
    int part_slots;           // slots per (row, KV head)
    int kce;                  // min(TOP_CHUNKS, cap_chunks)
    int kge;                  // min(TOP_GROUPS, kce * GPC)
    int ucap;                 // union capacity per KV head: kge (shared) or GQA * kge
};

#define NO_SLOT (-2147483647 - 1)

// Programmatic dependent launch (sm_90+): each kernel lets the next one of the step be scheduled at
// once, and waits for the previous one's completion (and memory) before touching anything, so the
// launch latency of a kernel overlaps the one before it. No-ops without the launch attribute, and on
// older architectures.
#if __CUDA_ARCH__ >= 900
#define STEP_PROLOGUE()                                        \
    do {                                                       \
        asm volatile("griddepcontrol.launch_dependents;");     \
        asm volatile("griddepcontrol.wait;" ::: "memory");     \
    } while (0)
#else
#define STEP_PROLOGUE() \
    do {                \
    } while (0)
#endif

// Step trace, compiled in only with -DHGA_TRACE (hga_runtime::jit::Jit::traced): for each event of
// TraceEvent, the earliest and the latest %globaltimer (ns) at which a block's thread 0 reached it,
// folded atomically into hga_trace[2e] and [2e + 1] (the host resets them before a step). Reduction
// atomics: a block does not wait for them.
enum TraceEvent {
    TR_SCORE_BEGIN, TR_SCORE_END,
    TR_SELECT_BEGIN, TR_CHUNKS_SELECTED, TR_GROUPS_SCORED, TR_GROUPS_SELECTED,
    TR_RESOLVE_BEGIN, TR_RESOLVE_STAGED, TR_RESOLVE_SEARCHED, TR_RESOLVE_UNION, TR_RESOLVE_LISTED, TR_RESOLVE_END,
    TR_ATTEND_BEGIN, TR_ATTEND_LOADED, TR_ATTEND_TOKENS, TR_ATTEND_COMBINED, TR_ATTEND_PARTIALS,
    TR_MERGE_BEGIN, TR_MERGE_END,
    TR_EVENTS
};
#ifdef HGA_TRACE
__device__ unsigned long long hga_trace[2 * TR_EVENTS];
// `dep`: a value the timer read waits for (a load's result arrives only when it is first used).
__device__ __forceinline__ void trace_event(int e, int dep) {
    if (threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t) : "r"(dep) : "memory");
        atomicMin(&hga_trace[2 * e], t);
        atomicMax(&hga_trace[2 * e + 1], t);
    }
}
#define TRACE(e) trace_event(e, 0)
#define TRACE_AFTER(e, dep) trace_event(e, dep)
#else
#define TRACE(e) \
    do {         \
    } while (0)
#define TRACE_AFTER(e, dep) \
    do {                    \
    } while (0)
#endif

#define NEG_INF (__int_as_float(0xff800000))
#define POS_INF (__int_as_float(0x7f800000))

__device__ __forceinline__ float ld_elem(elem_t x) {
#if ELEM_BF16
    return __uint_as_float(((unsigned)x) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#endif
}

__device__ __forceinline__ elem_t st_elem(float f) {
    elem_t h;
#if ELEM_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
}

// Low and high element of a 32-bit word holding two elements.
__device__ __forceinline__ float lo_elem(unsigned w) { return ld_elem((elem_t)(w & 0xffffu)); }
__device__ __forceinline__ float hi_elem(unsigned w) { return ld_elem((elem_t)(w >> 16)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Ranking order of routing: higher value first, then lower index (as the CPU backend).
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

// Block-wide sum and max; every thread gets the result. `red` holds 32 floats.
__device__ float block_sum(float v, float* red) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += red[w];
    return t;
}

__device__ float block_max(float v, float* red) {
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = NEG_INF;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t = fmaxf(t, red[w]);
    return t;
}


// Chunk windows of a query at `pos` (DESIGN.md §1): sinks 0..sinks_end, candidates
// sinks_end..local_start, local window and current chunk local_start*C..=pos.
struct Windows {
    int closed, sinks_end, local_start;
};

__device__ __forceinline__ Windows windows_at(int pos) {
    Windows w;
    w.closed = (pos + 1) / C;
    w.sinks_end = min(KF, w.closed);
    w.local_start = max(w.closed - KL, w.sinks_end);
    return w;
}

// Row of token position p in the window buffer of one (sequence, KV head).
__device__ __forceinline__ long long win_row(int p) {
    const int c = p / C;
    const int slot = c < KF ? c : KF + (c - KF) % (KL + 1);
    return (long long)slot * C + (p % C);
}

__device__ __forceinline__ long long win_base(int b, int kvh) {
    return ((long long)b * KVH + kvh) * (long long)(WIN_CHUNKS * C) * D;
}

// sin and cos of the angle p * f (p a token position, f an inverse frequency), both in double as the
// CPU computes them. The angle is reduced modulo 2*pi with a two-part constant first, so that sincos
// stays on its fast path for the large angles of long contexts.
__device__ __forceinline__ void rope_sincos(double p, double f, double* sn, double* cs) {
    const double x = p * f;
    const double k = rint(x * 0.15915494309189535);  // 1 / (2 pi)
    const double r = fma(-k, 2.44929359829470641e-16, fma(-k, 6.28318530717958623e+00, x));
    sincos(r, sn, cs);
}

// Rotary pair i: the two dimensions it rotates.
__device__ __forceinline__ void pair_dims(int i, int* a, int* bdim) {
#if ROPE_NEOX
    *a = i;
    *bdim = i + RDIM / 2;
#else
    *a = 2 * i;
    *bdim = 2 * i + 1;
#endif
}

// bf16 bits of summary tables (f32 range for sums of many keys, whatever the model's element type).
__device__ __forceinline__ float bf16_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ bf16_t st_bf16(float f) {
    bf16_t h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Whether this block is the last of `n` to arrive at `counter` (every thread of the block calls it; the
// answer goes through `*flag` in shared memory). The block's writes before the call are visible to the
// last block after it: the barrier orders them before thread 0's release, whose acquire half orders
// the last block's later reads (the pattern of CUTLASS's GenericBarrier). One acq_rel atomic instead of
// two full fences around a relaxed one: each fence waits for all of the block's outstanding memory
// operations (the step's chain at 64K was 1.1 µs shorter on the H200).
__device__ __forceinline__ bool last_to_arrive(int* counter, int n, int* flag) {
    __syncthreads();
    if (threadIdx.x == 0) {
        int old;
        asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(old) : "l"(counter) : "memory");
        *flag = old == n - 1;
    }
    __syncthreads();
    return *flag;
}

// Block-wide exclusive prefix sum of v over the threads below this one; `*total` gets the block's sum.
// Every thread of the block must call it.
__device__ int block_excl_scan(int v, int* total) {
    __shared__ int warp_tot[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) warp_tot[warp] = x;
    __syncthreads();
    // The warps' totals scanned across the lanes by shuffles: straight-line code (it runs cold).
    const int wt = lane < (int)(blockDim.x >> 5) ? warp_tot[lane] : 0;
    int incl = wt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
    }
    *total = __shfl_sync(0xffffffffu, incl, 31);
    const int before = __shfl_sync(0xffffffffu, incl - wt, warp);
    return before + x - v;
}

__device__ __forceinline__ int block_prefix_count(bool ok, int* total) { return block_excl_scan(ok ? 1 : 0, total); }


// Unsigned key with the order of the float (for finite values and infinities).
__device__ __forceinline__ unsigned order_key(float v) {
    const unsigned u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

#define SEL_VPT 32
#define SEL_CAND 2048
#ifndef SEL_REG
#define SEL_REG 64       // values per thread block_select holds in registers (16K at 256 threads)
#endif
#define SEL_REG_TAIL 8   // register values handled as a group (and tail loads in flight at once)
// block_select's general path: each thread holds a contiguous run of the values (the first SEL_VPT in
// registers); the k-th best key is found one bit at a time by 32 block-wide counts (a radix select),
// then ties at that key are taken lowest index first.
// Out of line: the rare path, called from two places of hga_select.
__device__ __noinline__ int block_select_radix(const float* vals, int n, int k, int* out, int out_offset) {
    const int cnt = min(k, n);
    if (cnt <= 0) return 0;
    const int per = (n + (int)blockDim.x - 1) / (int)blockDim.x;
    const int i0 = threadIdx.x * per;
    const int m = max(0, min(per, n - i0));
    if (cnt == n) {
        for (int j = 0; j < m; ++j) out[i0 + j] = i0 + j + out_offset;
        return cnt;
    }
    unsigned key[SEL_VPT];
#pragma unroll
    for (int j = 0; j < SEL_VPT; ++j) key[j] = j < m ? order_key(vals[i0 + j]) : 0u;
    unsigned prefix = 0u;
    int need = cnt;  // keys still to take among those that match `prefix` on the bits decided so far
    for (int bit = 31; bit >= 0; --bit) {
        const unsigned mask = 0xffffffffu << bit;
        const unsigned want = prefix | (1u << bit);
        int c = 0;
#pragma unroll
        for (int j = 0; j < SEL_VPT; ++j) c += (j < m) && ((key[j] & mask) == want);
        for (int j = SEL_VPT; j < m; ++j) c += (order_key(vals[i0 + j]) & mask) == want;
        block_excl_scan(c, &c);  // the block's total
        if (c >= need) prefix = want;
        else need -= c;
    }
    // prefix is the k-th best key: every key above it is taken, and the first `need` equal to it.
    int ties = 0;
#pragma unroll
    for (int j = 0; j < SEL_VPT; ++j) ties += (j < m) && key[j] == prefix;
    for (int j = SEL_VPT; j < m; ++j) ties += order_key(vals[i0 + j]) == prefix;
    int total;
    int tie_rank = block_excl_scan(ties, &total);
    int taken = 0;
    {
        int tr = tie_rank;
#pragma unroll
        for (int j = 0; j < SEL_VPT; ++j) {
            if (j < m) {
                const bool eq = key[j] == prefix;
                taken += key[j] > prefix || (eq && tr < need);
                tr += eq;
            }
        }
        for (int j = SEL_VPT; j < m; ++j) {
            const unsigned kj = order_key(vals[i0 + j]);
            const bool eq = kj == prefix;
            taken += kj > prefix || (eq && tr < need);
            tr += eq;
        }
    }
    int at = block_excl_scan(taken, &total);
    {
        int tr = tie_rank;
#pragma unroll
        for (int j = 0; j < SEL_VPT; ++j) {
            if (j < m) {
                const bool eq = key[j] == prefix;
                if (key[j] > prefix || (eq && tr < need)) out[at++] = i0 + j + out_offset;
                tr += eq;
            }
        }
        for (int j = SEL_VPT; j < m; ++j) {
            const unsigned kj = order_key(vals[i0 + j]);
            const bool eq = kj == prefix;
            if (kj > prefix || (eq && tr < need)) out[at++] = i0 + j + out_offset;
            tr += eq;
        }
    }
    return cnt;
}

// The register values come in groups of SEL_REG_TAIL, and only the groups that n reaches are run: the
// instructions a step executes (and fetches) grow with n, not with SEL_REG.
template <int THREADS>
__device__ __forceinline__ int sel_groups(int n) {
    return min(SEL_REG / SEL_REG_TAIL, (n + SEL_REG_TAIL * THREADS - 1) / (SEL_REG_TAIL * THREADS));
}

// f(j, i) for each register value j of the groups that n reaches (i = threadIdx.x + j * THREADS, which
// may be >= n in the last group). The first group past n leaves the unrolled groups at once: one jump,
// not one per skipped group (this code runs cold every step, and each jump to a line not yet fetched
// waits on instruction fetch).
template <int THREADS, typename F>
__device__ __forceinline__ void sel_reg_groups(int n, F f) {
    const int ng = sel_groups<THREADS>(n);
#pragma unroll
    for (int g = 0; g < SEL_REG / SEL_REG_TAIL; ++g) {
        if (g >= ng) break;
#pragma unroll
        for (int jj = 0; jj < SEL_REG_TAIL; ++jj) {
            const int j = g * SEL_REG_TAIL + jj;
            f(j, (int)threadIdx.x + j * THREADS);
        }
    }
}

// f(value, i) for each of thread t's values i = t + j * THREADS of block_select: `v` holds the first
// SEL_REG, any beyond are read from `vals`, SEL_REG_TAIL loads at a time.
template <int THREADS, typename F>
__device__ __forceinline__ void sel_each(const float (&v)[SEL_REG], const float* vals, int n, F f) {
    sel_reg_groups<THREADS>(n, [&](int j, int i) {
        if (i < n) f(v[j], i);
    });
#pragma unroll SEL_REG_TAIL
    for (int i = threadIdx.x + SEL_REG * THREADS; i < n; i += THREADS) f(vals[i], i);
}

template <int THREADS>
struct SelectSmem {
    float tmax_v[THREADS];
    int tmax_i[THREADS];
    float cand_v[SEL_CAND];
    int cand_i[SEL_CAND];
    unsigned char cand_take[SEL_CAND];
    float thr;
};

// Writes the positions (+ out_offset) of the best k of vals[0..n) (higher value first, then lower
// index: the CPU's ranking) to out in ascending order; returns min(k, n). Fast path (k <= half the
// block): thread t takes values t, t + THREADS, ... (coalesced; re-reads hit L1). The k-th best of the
// maxima of k or more lane groups bounds the answer from below, so only values at or above it (k of
// them at least, usually few more) are ranked exactly; the radix select above when they are too many.
// Every thread of the block must call it; the block must have THREADS threads.
template <int THREADS>
__device__ int block_select(const float* vals, int n, int k, int* out, int out_offset, SelectSmem<THREADS>& sm) {
    float* tmax_v = sm.tmax_v;
    int* tmax_i = sm.tmax_i;
    float* cand_v = sm.cand_v;
    int* cand_i = sm.cand_i;
    unsigned char* cand_take = sm.cand_take;
    float& thr_s = sm.thr;
    const int cnt = min(k, n);
    if (cnt <= 0) return 0;
    if (cnt == n) {
        for (int i = threadIdx.x; i < n; i += THREADS) out[i] = i + out_offset;
        return cnt;
    }
    if (cnt > THREADS / 2) return block_select_radix(vals, n, k, out, out_offset);
    // Thread t's values t + j * THREADS: the first SEL_REG in registers (all loads in flight at once),
    // any beyond from memory, SEL_REG_TAIL loads at a time.
    float v[SEL_REG];
    sel_reg_groups<THREADS>(n, [&](int j, int i) { v[j] = i < n ? vals[i] : NEG_INF; });
    float lm = NEG_INF;
    int li = 0x7fffffff;
    sel_each<THREADS>(v, vals, n, [&](float x, int i) {
        if (x > lm) { lm = x; li = i; }  // ascending i: the first of equal values is kept
    });
    // A lower bound of the answer: the cnt-th best of the maxima of lane groups of gs threads, gs as
    // large as leaves cnt groups holding values (fewer maxima to rank, fewer candidates above them).
    const int busy = min(n, THREADS);  // threads holding values: >= cnt
    int gs = 32;
    while (gs > 1 && busy / gs < cnt) gs >>= 1;
    for (int o = gs >> 1; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, lm, o);
        const int oi = __shfl_xor_sync(0xffffffffu, li, o);
        if (better(ov, oi, lm, li)) { lm = ov; li = oi; }
    }
    const int n_groups = (busy + gs - 1) / gs;
    const int slot = threadIdx.x / gs;
    const bool ranks = (threadIdx.x % gs) == 0 && slot < n_groups;
    __syncthreads();
    if (ranks) {
        tmax_v[slot] = lm;
        tmax_i[slot] = li;
    }
    __syncthreads();
    if (ranks) {
        int r = 0;
        for (int t = 0; t < n_groups; ++t) r += better(tmax_v[t], tmax_i[t], lm, li);
        if (r == cnt - 1) thr_s = lm;
    }
    __syncthreads();
    const float thr = thr_s;
    int c = 0;
    sel_each<THREADS>(v, vals, n, [&](float x, int) { c += x >= thr; });
    int total;
    int at = block_excl_scan(c, &total);
    if (total > SEL_CAND) return block_select_radix(vals, n, k, out, out_offset);
    sel_each<THREADS>(v, vals, n, [&](float x, int i) {
        if (x >= thr) { cand_v[at] = x; cand_i[at] = i; ++at; }
    });
    __syncthreads();
    // Exact ranks among the candidates; the best cnt are taken.
    for (int x = threadIdx.x; x < total; x += THREADS) {
        const float cv = cand_v[x];
        const int ci = cand_i[x];
        int r = 0;
        for (int y = 0; y < total; ++y) r += better(cand_v[y], cand_i[y], cv, ci);
        cand_take[x] = r < cnt;
    }
    __syncthreads();
    // Output position: taken candidates with a lower index.
    for (int x = threadIdx.x; x < total; x += THREADS) {
        if (!cand_take[x]) continue;
        const int ci = cand_i[x];
        int o = 0;
        for (int y = 0; y < total; ++y) o += cand_take[y] && cand_i[y] < ci;
        out[o] = ci + out_offset;
    }
    return cnt;
}

// block_select for n <= THREADS, through a map: writes map(i) for the best k of vals[0..n) (the
// CPU's ranking) to out in ascending order of i; returns min(k, n). Thread i ranks value i against all
// of them in shared memory and output positions come from warp ballots: one load and two barriers,
// where block_select takes several rounds of each. map(i)'s loads are issued with the value's. Every
// thread of the block must call it; the block must have THREADS threads.
template <int THREADS, typename Map>
__device__ int block_select_few(const float* vals, int n, int k, int* out, Map map, SelectSmem<THREADS>& sm) {
    const int cnt = min(k, n);
    const int i = threadIdx.x, warp = i >> 5, lane = i & 31;
    const bool have = i < n;
    const float v = have ? vals[i] : NEG_INF;
    const int mapped = have ? map(i) : 0;
    sm.tmax_v[i] = v;
    __syncthreads();
    int r = 0;
    if (have && cnt < n) {
        for (int j = 0; j < n; ++j) r += better(sm.tmax_v[j], j, v, i);
    }
    const bool take = have && r < cnt;
    const unsigned ballot = __ballot_sync(0xffffffffu, take);
    if (lane == 0) sm.cand_i[warp] = __popc(ballot);
    __syncthreads();
    int before = 0;
    for (int w = 0; w < warp; ++w) before += sm.cand_i[w];
    if (take) out[before + __popc(ballot & ((1u << lane) - 1u))] = mapped;
    return cnt;
}

__device__ __forceinline__ long long bk_of(int b, int kvh) { return (long long)b * KVH + kvh; }

// The host record of group g of (row b, KV head kvh), or null.
__device__ __forceinline__ elem_t* host_record(const HgaParams& P, long long bk, int g) {
    return (elem_t*)P.group_addr[bk * P.cap_groups + g];
}

// ---------------------------------------------------------------------------------------------------
// hga_append: writes this step's keys and values ([B][KVH][D], keys after RoPE) at pos[b] into the
// window buffer and into the group's host record (mapped host memory: the host copy is written by the
// same kernel, bit for bit). grid (KVH, B), block D.
extern "C" __global__ void __launch_bounds__(D) hga_append(HgaParams P, const elem_t* k_new, const elem_t* v_new) {
    STEP_PROLOGUE();
    const int kvh = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    const int pos = P.pos[b];
    if (pos < 0) return;
    const long long src = bk_of(b, kvh) * D + d;
    const elem_t k = k_new[src], v = v_new[src];
    const long long dst = win_base(b, kvh) + win_row(pos) * D + d;
    P.win_k[dst] = k;
    P.win_v[dst] = v;
    elem_t* rec = host_record(P, bk_of(b, kvh), pos / G);
    if (rec != nullptr) {
        rec[(pos % G) * D + d] = k;
        rec[(G + pos % G) * D + d] = v;
    }
}

// ---------------------------------------------------------------------------------------------------
// Summaries of span `span` (0: chunk c; 1 + j: its group j) of (row b, KV head kvh), written as bf16.
// Keys at positions >= p0 come from `staged` ([n][KVH][D], position p0 first) when it is not null,
// the others from the window. Tokens are staged SUMT at a time; each dimension sums over tokens in
// order, as the CPU does. Block D.
#define SUMT 32
__device__ void summarize_span(const HgaParams& P, int b, int kvh, int span, int c, const elem_t* staged, int p0) {
    __shared__ float rows[SUMT][D + 1];
    __shared__ float fin[D];
    const int d = threadIdx.x;
    const long long seq_head = bk_of(b, kvh);
    const int start = span == 0 ? c * C : c * C + (span - 1) * G;
    const int n = span == 0 ? C : G;
    bf16_t* out = span == 0 ? P.chunk_sum + (seq_head * P.cap_chunks + c) * (SV * D)
                            : P.group_sum + (seq_head * P.cap_groups + (long long)c * GPC + span - 1) * (SV * D);
    const elem_t* win = P.win_k + win_base(b, kvh);
    auto key_row = [&](int p) -> const elem_t* {
        return staged != nullptr && p >= p0 ? staged + ((long long)(p - p0) * KVH + kvh) * D : win + win_row(p) * D;
    };
    float acc = 0.f, lo = POS_INF, hi = NEG_INF;
    for (int t0 = 0; t0 < n; t0 += SUMT) {
        const int m = min(SUMT, n - t0);
        __syncthreads();
        // All loads of the pass in flight together: 8 elements (16 bytes) per load.
        constexpr int SVEC = SUMT * D / 8;
        uint4 buf[(SVEC + D - 1) / D];
#pragma unroll
        for (int l = 0; l < (SVEC + D - 1) / D; ++l) {
            const int x = d + l * D, t = x / (D / 8);
            if (x < SVEC && t < m) buf[l] = *(const uint4*)(key_row(start + t0 + t) + (x % (D / 8)) * 8);
        }
#pragma unroll
        for (int l = 0; l < (SVEC + D - 1) / D; ++l) {
            const int x = d + l * D, t = x / (D / 8), c8 = (x % (D / 8)) * 8;
            if (x < SVEC && t < m) {
                const unsigned* wv = (const unsigned*)&buf[l];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    rows[t][c8 + 2 * j] = lo_elem(wv[j]);
                    rows[t][c8 + 2 * j + 1] = hi_elem(wv[j]);
                }
            }
        }
        __syncthreads();
#if SCORE_MIXED
        // Anchor pairs: the pre-RoPE key, rotated back by the token's own position, in place.
        for (int x = d; x < m * PAIRS; x += D) {
            const int t = x / PAIRS, i = x % PAIRS;
            if (HIGH_FREQ[i]) continue;
            int a, bd;
            pair_dims(i, &a, &bd);
            double sn, cs;
            rope_sincos(-(double)(start + t0 + t), INV_FREQ[i], &sn, &cs);
            const double xa = rows[t][a], xb = rows[t][bd];
            rows[t][a] = (float)(xa * cs - xb * sn);
            rows[t][bd] = (float)(xa * sn + xb * cs);
        }
        __syncthreads();
#endif
        for (int t = 0; t < m; ++t) {
            const float x = rows[t][d];
            acc += x;
            lo = fminf(lo, x);
            hi = fmaxf(hi, x);
        }
    }
#if SCORE_MINMAX
    out[d] = st_bf16(lo);
    out[D + d] = st_bf16(hi);
#elif SCORE_MIXED
    fin[d] = acc;
    __syncthreads();
    float v = acc;
    if (d < RDIM) {
#if ROPE_NEOX
        const int i = d < RDIM / 2 ? d : d - RDIM / 2;
#else
        const int i = d / 2;
#endif
        if (!HIGH_FREQ[i]) {
            // Raw sum rotated to the span's centre.
            int a, bd;
            pair_dims(i, &a, &bd);
            double sn, cs;
            rope_sincos((double)start + ((double)n - 1.0) / 2.0, INV_FREQ[i], &sn, &cs);
            const double da = fin[a], db = fin[bd];
            v = d == a ? (float)(da * cs - db * sn) : (float)(da * sn + db * cs);
        }
    }
    out[d] = st_bf16(v);
#else
    out[d] = st_bf16(acc);
#endif
}

// hga_summarize: summaries of chunk close_chunk[b] (skipped when < 0) from the window: block x = 0 the
// chunk's, block x = 1 + j its group j's. grid (1 + GPC, KVH, B), block D.
extern "C" __global__ void __launch_bounds__(D) hga_summarize(HgaParams P, const int* close_chunk) {
    STEP_PROLOGUE();
    const int c = close_chunk[blockIdx.z];
    if (c < 0) return;
    summarize_span(P, blockIdx.z, blockIdx.y, blockIdx.x, c, nullptr, 0);
}

// hga_ingest_summarize: summaries of chunks first_chunk + z of row `row` whose keys are partly in the
// window (positions < p0) and partly staged (positions >= p0). Runs before hga_ingest of the same
// block, which may overwrite window rows it reads. grid (1 + GPC, KVH, chunks), block D.
extern "C" __global__ void __launch_bounds__(D)
    hga_ingest_summarize(HgaParams P, int row, int first_chunk, const elem_t* staged, int p0) {
    STEP_PROLOGUE();
    summarize_span(P, row, blockIdx.y, blockIdx.x, first_chunk + blockIdx.z, staged, p0);
}

// hga_ingest: appends n tokens ([n][KVH][D] keys and values, positions p0..p0+n) of row `row`: into
// their host records, and into the window where they stay after the block (sinks, and the last
// KL + 1 chunks). grid (ceil(n * KVH * D / 8 / NT)), block NT; 8 elements per thread.
extern "C" __global__ void __launch_bounds__(NT)
    hga_ingest(HgaParams P, int row, int p0, int n, const elem_t* k, const elem_t* v) {
    STEP_PROLOGUE();
    constexpr int VPRW = D / 8;
    const long long x = (long long)blockIdx.x * NT + threadIdx.x;
    if (x >= (long long)n * KVH * VPRW) return;
    const int t = (int)(x / (KVH * VPRW)), kvh = (int)(x / VPRW % KVH), c8 = (int)(x % VPRW) * 8;
    const int p = p0 + t, ch = p / C, last_chunk = (p0 + n - 1) / C;
    const long long src = ((long long)t * KVH + kvh) * D + c8;
    const uint4 kk = *(const uint4*)(k + src), vv = *(const uint4*)(v + src);
    if (ch < KF || ch >= last_chunk - KL) {
        const long long dst = win_base(row, kvh) + win_row(p) * D + c8;
        *(uint4*)(P.win_k + dst) = kk;
        *(uint4*)(P.win_v + dst) = vv;
    }
    elem_t* rec = host_record(P, bk_of(row, kvh), p / G);
    if (rec != nullptr) {
        *(uint4*)(rec + (p % G) * D + c8) = kk;
        *(uint4*)(rec + (G + p % G) * D + c8) = vv;
    }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core fragments, shared by the summary scoring and the attention.
#if VW == 8
typedef uint4 vec_t;
#elif VW == 4
typedef uint2 vec_t;
#else
typedef unsigned vec_t;
#endif
union VecWords {
    vec_t v;
    unsigned w[VW / 2];
};
constexpr int NWARPS = NT / 32;
constexpr int WORDS = D / 8;         // 32-bit words of a row that one lane holds (a quarter of the row)
constexpr int VPL = D / (4 * VW);    // vector loads per row and lane
constexpr int KSTEPS = D / 16;       // k steps of Q·Kᵀ
constexpr int PASS = TT / 16;        // 16-token steps whose loads a warp issues together

// Tensor-core tiles (sm_80+): D(16x8, f32) += A(16x16, row) · B(16x8, col), elements bf16 or f16.
// Fragments (g = lane / 4, t = lane % 4): a0 (row g, k 2t..2t+1), a1 (row g+8, same k), a2 (row g,
// k 2t+8..), a3 (row g+8, k 2t+8..); b0 (k 2t..2t+1, col g), b1 (k 2t+8.., col g); c0/c1 (row g, cols
// 2t, 2t+1), c2/c3 (row g+8, same cols).
__device__ __forceinline__ void mma_16816(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                          unsigned b1) {
#if ELEM_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
#endif
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The transpose of an 8x8 16-bit matrix held as one word per lane (row lane / 4, columns 2(lane % 4)..+1).
__device__ __forceinline__ unsigned transpose8x8(unsigned x) {
    unsigned y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
}

// Two floats as the element pair of one 32-bit word (lo = first).
__device__ __forceinline__ unsigned pack_elems(float lo, float hi) {
    return (unsigned)st_elem(lo) | ((unsigned)st_elem(hi) << 16);
}

// A lane's quarter of a row: lane column t (of 4) holds elements 4·VW·j + VW·t + e (j < VPL, e < VW), as
// WORDS words in that order. Q·Kᵀ sums over the head dimension in any order, so lane t's words 2s and
// 2s+1 are its k fragments of k step s (the same for the query row and the key rows); P·V's output
// columns come out in the same order (see hga_attend).
__device__ __forceinline__ void load_quarter(const elem_t* row, int t, unsigned* w) {
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
        VecWords x;
        x.v = *(const vec_t*)(row + 4 * VW * j + VW * t);
#pragma unroll
        for (int e = 0; e < VW / 2; ++e) w[j * (VW / 2) + e] = x.w[e];
    }
}

__device__ __forceinline__ void store_quarter(elem_t* row, int t, const unsigned* w) {
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
        VecWords x;
#pragma unroll
        for (int e = 0; e < VW / 2; ++e) x.w[e] = w[j * (VW / 2) + e];
        *(vec_t*)(row + 4 * VW * j + VW * t) = x.v;
    }
}

// Head dimension of element e (0 or 1) of word i of lane column t's quarter.
__device__ __forceinline__ int quarter_dim(int t, int i, int e) {
    const int x = 2 * i + e;
    return 4 * VW * (x / VW) + VW * t + x % VW;
}

// ---------------------------------------------------------------------------------------------------
// Summary scoring on tensor cores where the score is a dot product of bf16 vectors (SCORE_MMA:
// score_rows_mma), else by FMAs (score_rows, over queries staged as floats).
#if !SCORE_MMA
// Scores of summary rows against staged query heads: out[h * out_stride + i] = SCALE * score(q_s[h],
// table row row_of(i)) for i in [i0, i1), h < nh. Eight lanes share a row (lane `sub` holds elements
// 32j + 4sub .. + 4: each load of the eight lanes reads 64 contiguous bytes), four rows per warp per
// pass; SB passes are loaded before any is scored, so their loads are in flight together. Used by
// chunk scoring and group scoring alike.
constexpr int EV = D / 32;  // 8-byte loads per lane per vector
constexpr int SB = D <= 128 ? 4 : 2;

template <typename RowOf>
__device__ void score_rows(const bf16_t* table, RowOf row_of, int i0, int i1, int nh, const float (*q_s)[D],
                           float* out, long long out_stride) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int sub = lane & 7, grp = lane >> 3;
    for (int base = i0 + warp * 4; base < i1; base += nw * 4 * SB) {
        uint2 raw[SB][SV][EV];
#pragma unroll
        for (int s = 0; s < SB; ++s) {
            const int i = base + s * nw * 4 + grp;
            const bf16_t* row = table + (long long)row_of(i < i1 ? i : i0) * (SV * D) + 4 * sub;
#pragma unroll
            for (int v = 0; v < SV; ++v)
#pragma unroll
                for (int j = 0; j < EV; ++j) raw[s][v][j] = *(const uint2*)(row + v * D + 32 * j);
        }
        // Widened once, then reused by every head.
        float4 sv[SB][SV][EV];
#pragma unroll
        for (int s = 0; s < SB; ++s)
#pragma unroll
            for (int v = 0; v < SV; ++v)
#pragma unroll
                for (int j = 0; j < EV; ++j) {
                    const uint2 a = raw[s][v][j];
                    sv[s][v][j] = make_float4(bf16_lo(a.x), bf16_hi(a.x), bf16_lo(a.y), bf16_hi(a.y));
                }
#pragma unroll 1
        for (int h = 0; h < nh; ++h) {
            float4 q4[EV];
#pragma unroll
            for (int j = 0; j < EV; ++j) q4[j] = *(const float4*)&q_s[h][32 * j + 4 * sub];
#pragma unroll
            for (int s = 0; s < SB; ++s) {
                float acc = 0.f;
#pragma unroll
                for (int j = 0; j < EV; ++j) {
                    const float4 a = sv[s][0][j];
#if SCORE_MINMAX
                    const float4 z = sv[s][SV - 1][j];
                    acc += fmaxf(q4[j].x * a.x, q4[j].x * z.x) + fmaxf(q4[j].y * a.y, q4[j].y * z.y)
                         + fmaxf(q4[j].z * a.z, q4[j].z * z.z) + fmaxf(q4[j].w * a.w, q4[j].w * z.w);
#else
                    acc += q4[j].x * a.x + q4[j].y * a.y + q4[j].z * a.z + q4[j].w * a.w;
#endif
                }
                acc += __shfl_xor_sync(0xffffffffu, acc, 4);
                acc += __shfl_xor_sync(0xffffffffu, acc, 2);
                acc += __shfl_xor_sync(0xffffffffu, acc, 1);
                const int i = base + s * nw * 4 + grp;
                if (sub == 0 && i < i1) out[h * out_stride + i] = acc * SCALE;
            }
        }
    }
}

// Stages query heads qh0 .. qh0 + nh (of row b; nh <= GQA_TILE_Q) in q_s as floats; THREADS = the
// block's size, so that every load is issued before the first is used. Every thread must call it.
template <int THREADS>
__device__ void stage_queries(const HgaParams& P, int b, int qh0, int nh, float (*q_s)[D]) {
    constexpr int PER = (GQA_TILE_Q * D + THREADS - 1) / THREADS;
    elem_t x[PER];
#pragma unroll
    for (int l = 0; l < PER; ++l) {
        const int e = threadIdx.x + l * THREADS, h = e / D;
        x[l] = e < GQA_TILE_Q * D && h < nh ? P.q[((long long)b * QH + qh0 + h) * D + e % D] : (elem_t)0;
    }
    __syncthreads();
#pragma unroll
    for (int l = 0; l < PER; ++l) {
        const int e = threadIdx.x + l * THREADS;
        if (e < GQA_TILE_Q * D) q_s[e / D][e % D] = ld_elem(x[l]);
    }
    __syncthreads();
}

// Prefetches into L1 the rows that score_rows' first round loads (a lane per row reads its lines).
template <typename RowOf>
__device__ void prefetch_rows(const bf16_t* table, RowOf row_of, int i0, int i1) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    if ((lane & 7) != 0) return;
#pragma unroll
    for (int s = 0; s < SB; ++s) {
        const int i = i0 + warp * 4 + s * nw * 4 + (lane >> 3);
        if (i >= i1) continue;
        const bf16_t* row = table + (long long)row_of(i) * (SV * D);
#pragma unroll
        for (int x = 0; x < SV * D; x += 64) asm volatile("prefetch.global.L1 [%0];" ::"l"(row + x));
    }
}
#endif

// Dot-product scores on tensor cores (one summary vector, and bf16 queries like the bf16 tables): the
// scores of 16 rows against 8 heads are KSTEPS mma of rows (A, straight from memory as in hga_attend)
// by queries (B), where score_rows spends D / 8 FMAs and three shuffles per row, head and lane. Warp w
// takes rows i0 + 16w .., 16·warps at a time; out[h * out_stride + i] for heads qh0 + h, h < nh.
template <typename RowOf>
__device__ void score_rows_mma(const HgaParams& P, int b, int qh0, int nh, const bf16_t* table, RowOf row_of, int i0,
                               int i1, float* out, long long out_stride) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int fg = lane >> 2, ft = lane & 3;
    for (int base = i0 + 16 * warp; base < i1; base += 16 * nw) {
        unsigned kw[2][WORDS];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int i = base + 8 * half + fg;
            load_quarter(table + (long long)row_of(i < i1 ? i : i0) * D, ft, kw[half]);
        }
        for (int h0 = 0; h0 < nh; h0 += 8) {
            unsigned qb[WORDS];
            if (h0 + fg < nh) load_quarter(P.q + ((long long)b * QH + qh0 + h0 + fg) * D, ft, qb);
            else {
#pragma unroll
                for (int x = 0; x < WORDS; ++x) qb[x] = 0u;
            }
            // c0/c1: row fg's scores for heads 2ft, 2ft + 1; c2/c3: row 8 + fg's.
            float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks)
                mma_16816(c, kw[0][2 * ks], kw[1][2 * ks], kw[0][2 * ks + 1], kw[1][2 * ks + 1], qb[2 * ks], qb[2 * ks + 1]);
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int i = base + 8 * (r >> 1) + fg, h = h0 + 2 * ft + (r & 1);
                if (i < i1 && h < nh) out[h * out_stride + i] = c[r] * SCALE;
            }
        }
    }
}

// Scores of summary rows i0 .. i1 (table row row_of(i)) against query heads qh0 .. qh0 + nh of row b,
// staged GQA_TILE_Q at a time: out[h * out_stride + i] for head qh0 + h. The first round's rows are
// prefetched before the queries are staged, so that the two loads' latencies overlap: row_of must be
// readable on entry. Tensor cores instead where they apply (SCORE_MMA). Every thread must call it.
template <int THREADS, typename RowOf>
__device__ void score_heads(const HgaParams& P, int b, int qh0, int nh, const bf16_t* table, RowOf row_of, int i0,
                            int i1, float* out, long long out_stride, float (*q_s)[D]) {
#if SCORE_MMA
    score_rows_mma(P, b, qh0, nh, table, row_of, i0, i1, out, out_stride);
#else
    prefetch_rows(table, row_of, i0, i1);
    for (int h0 = 0; h0 < nh; h0 += GQA_TILE_Q) {
        const int n = min(GQA_TILE_Q, nh - h0);
        stage_queries<THREADS>(P, b, qh0 + h0, n, q_s);
        score_rows(table, row_of, i0, i1, n, q_s, out + h0 * out_stride, out_stride);
    }
#endif
}

// ---------------------------------------------------------------------------------------------------
// hga_chunk_score: scores of the candidate chunks against every query head of a KV head.
// grid (ceil(max candidates / CHUNK_TILE), KVH, B), block CNT (small blocks: many of them in flight);
// block (tile, kvh, b) scores candidates tile * CHUNK_TILE .. of row b, KV head kvh.
extern "C" __global__ void __launch_bounds__(CNT) hga_chunk_score(HgaParams P) {
    STEP_PROLOGUE();
    __shared__ __align__(16) float q_s[GQA_TILE_Q][D];
    const int tile = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int pos = P.pos[b];
    if (pos < 0) return;
    const Windows w = windows_at(pos);
    const int n_cand = w.local_start - w.sinks_end;
    const int i0 = tile * CHUNK_TILE;
    if (i0 >= n_cand) return;
    const int i1 = min(n_cand, i0 + CHUNK_TILE);
    TRACE(TR_SCORE_BEGIN);
    const bf16_t* table = P.chunk_sum + bk_of(b, kvh) * P.cap_chunks * (long long)(SV * D);
    score_heads<CNT>(P, b, kvh * GQA, GQA, table, [&](int i) { return w.sinks_end + i; }, i0, i1,
                     P.chunk_score + ((long long)b * QH + kvh * GQA) * P.cap_chunks, P.cap_chunks, q_s);
    TRACE(TR_SCORE_END);
}

// Summed softmax mass over the GQA query heads of KV head kvh (shared routing), written to mass[0..n).
__device__ void shared_mass(const float* scores, long long head_stride, int n, float* mass, float* red) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) mass[i] = 0.f;
    for (int h = 0; h < GQA; ++h) {
        const float* s = scores + h * head_stride;
        float m = NEG_INF;
#pragma unroll 8
        for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, s[i]);
        m = block_max(m, red);
        float z = 0.f;
#pragma unroll 8
        for (int i = threadIdx.x; i < n; i += blockDim.x) z += expf(s[i] - m);
        z = block_sum(z, red);
        for (int i = threadIdx.x; i < n; i += blockDim.x) mass[i] += expf(s[i] - m) / z;
    }
    __syncthreads();
}

// ---------------------------------------------------------------------------------------------------
// hga_select's unit counters per (row, KV head) (the last unit resolves), after hga_attend's split
// counters in P.done; back to 0 after every step.
__device__ __forceinline__ int* units_done(const HgaParams& P) { return P.done + (long long)P.batch * (KVH * HTILES); }

#define RESOLVE_SMEM 1024
// Eviction: a miss takes the first slot from the clock hand not used in the last `recent` steps
// (hga_runtime::offload::PartitionModel models it), then, when those run out, any slot not used this
// step. Under first-in-first-out a slot lives about one lap of the hand, PS / misses per step; sparing
// the slots used in the last quarter of a lap gives groups that came back a second chance, as CLOCK's
// reference bit does, with no state beyond the stamps.
__device__ __forceinline__ int recent_steps(int part_slots, int last_misses) {
    return max(1, part_slots / (4 * max(1, last_misses)));
}

#define HASH_CAP 1024
// Up to this many units per KV head, the union searches the sorted lists; beyond, a hash table.
#define UNION_SEARCH_UNITS 16
// Shared memory of resolve_kv.
struct ResolveSmem {
    int new_hand;
    int lists[RESOLVE_SMEM];
    int uni[RESOLVE_SMEM];   // the union's first RESOLVE_SMEM groups (also in P.uni_group)
    int miss[RESOLVE_SMEM];  // the first RESOLVE_SMEM misses (the rest in P.miss_list)
    int cnt[GQA];
    int hkey[HASH_CAP];
    int hfirst[HASH_CAP];
    unsigned hmask[HASH_CAP];
};

template <int THREADS>
__device__ void resolve_kv(const HgaParams& P, int b, int kvh, ResolveSmem& sm);

// Shared memory of select_unit (the selection's and the resolve's are never live together).
#define ROUTE_SEL_SMEM 256
#define ROUTE_CAND_SMEM 1024
struct RouteSmem {
    float red[32];
    __align__(16) float q_s[GQA_TILE_Q][D];
    int last;
    int sel_s[ROUTE_SEL_SMEM];    // the selected chunks, where kce fits
    int cand_s[ROUTE_CAND_SMEM];  // their first ROUTE_CAND_SMEM candidate groups
    union {
        SelectSmem<SNT> sel;
        ResolveSmem res;
    } u;
};

// hga_select: routing of one unit (query head, or KV head when shared): the top TOP_CHUNKS candidate
// chunks (block_select), their groups scored, the top TOP_GROUPS of those. Lists come out ascending.
// With `fuse_resolve`, the last unit of a (row, KV head) to finish also resolves it (resolve_kv): one
// launch less per step. Its counters follow attend's in `done` and are back to 0 after every step.
// grid (UNITS, B), block SNT.
__device__ void select_unit(const HgaParams& P, int u, int b, bool fuse_resolve, RouteSmem& sm) {
    constexpr int THREADS = SNT;
    const int pos = P.pos[b];
    const int kvh = SHARED ? u : u / GQA;
    if (pos < 0) return;
    const Windows w = windows_at(pos);
    const int n_cand = w.local_start - w.sinks_end;
    TRACE(TR_SELECT_BEGIN);
    const long long ou = (long long)b * UNITS + u;
#if SHARED
    float* cvals = P.chunk_mass + bk_of(b, kvh) * P.cap_chunks;
    shared_mass(P.chunk_score + ((long long)b * QH + u * GQA) * P.cap_chunks, P.cap_chunks, n_cand, cvals, sm.red);
#else
    const float* cvals = P.chunk_score + ((long long)b * QH + u) * P.cap_chunks;
#endif
    int* sel = P.sel_chunk + ou * P.kce;
    // The selection goes to shared memory where it fits (read right below), and is copied out after.
    int* sel_w = P.kce <= ROUTE_SEL_SMEM ? sm.sel_s : sel;
    const int nsel = n_cand <= THREADS
                         ? block_select_few<THREADS>(cvals, n_cand, P.kce, sel_w, [&](int i) { return w.sinks_end + i; }, sm.u.sel)
                         : block_select<THREADS>(cvals, n_cand, P.kce, sel_w, w.sinks_end, sm.u.sel);
    if (threadIdx.x == 0) P.n_sel_chunk[ou] = nsel;
    __syncthreads();
    TRACE(TR_CHUNKS_SELECTED);
    if (sel_w != sel) {
        for (int i = threadIdx.x; i < nsel; i += THREADS) sel[i] = sel_w[i];
    }
    // The selected chunks' groups, ascending (the chunks are).
    const int kg = P.kce * GPC;
    const int n = nsel * GPC;
    int* cand = P.group_cand + ou * (long long)kg;
    for (int i = threadIdx.x; i < n; i += THREADS) {
        const int g = sel_w[i / GPC] * GPC + i % GPC;
        cand[i] = g;
        if (i < ROUTE_CAND_SMEM) sm.cand_s[i] = g;
    }
    __syncthreads();
    auto cand_at = [&](int i) { return i < ROUTE_CAND_SMEM ? sm.cand_s[i] : cand[i]; };
    const bf16_t* table = P.group_sum + bk_of(b, kvh) * P.cap_groups * (long long)(SV * D);
    const int qh_unit = SHARED ? u * GQA : u;
    score_heads<THREADS>(P, b, qh_unit, UNIT_HEADS, table, cand_at, 0, n,
                         P.group_score + ((long long)b * QH + qh_unit) * kg, kg, sm.q_s);
    __syncthreads();
    TRACE(TR_GROUPS_SCORED);
#if SHARED
    float* gvals = P.group_mass + bk_of(b, kvh) * kg;
    shared_mass(P.group_score + ((long long)b * QH + u * GQA) * kg, kg, n, gvals, sm.red);
#else
    const float* gvals = P.group_score + ((long long)b * QH + u) * kg;
#endif
    int* out = P.sel_group + ou * P.kge;
    int cnt;
    if (n <= THREADS) {
        cnt = block_select_few<THREADS>(gvals, n, P.kge, out, cand_at, sm.u.sel);
    } else {
        cnt = block_select<THREADS>(gvals, n, P.kge, out, 0, sm.u.sel);
        __syncthreads();
        // block_select wrote candidate positions (ascending); their groups are ascending too. (Read
        // through L2: no L1 line of the lists may go stale for the block that resolves below.)
        for (int r = threadIdx.x; r < cnt; r += THREADS) out[r] = cand_at(__ldcg(&out[r]));
    }
    if (threadIdx.x == 0) P.n_sel_group[ou] = cnt;
    TRACE(TR_GROUPS_SELECTED);
    if (!fuse_resolve) return;
    // The last unit of the KV head to finish resolves it (its lists' writes are ordered before the
    // counter update, as in hga_attend's merge).
    int* done = units_done(P) + bk_of(b, kvh);
    if (!last_to_arrive(done, SHARED ? 1 : GQA, &sm.last)) return;
    if (threadIdx.x == 0) *done = 0;
    resolve_kv<THREADS>(P, b, kvh, sm.u.res);
}

extern "C" __global__ void __launch_bounds__(SNT, 1) hga_select(HgaParams P, int fuse_resolve) {
    STEP_PROLOGUE();
    __shared__ RouteSmem sm;
    select_unit(P, blockIdx.x, blockIdx.y, fuse_resolve != 0, sm);
}

// ---------------------------------------------------------------------------------------------------
__host__ __device__ constexpr int floor_pow2(int x) { return x < 2 ? 1 : 2 * floor_pow2(x / 2); }

// Whether the ascending list l[0..len) holds g (len <= TOP_GROUPS; l[0] is read even when len is 0):
// a binary search of fixed length with a select per step instead of a branch (this code runs cold
// every step: each branch to a line not yet fetched waits on instruction fetch). Lists staged in
// shared memory are padded with INT_MAX past their counts, so they can be searched at full length.
__device__ __forceinline__ bool list_has(const int* l, int len, int g) {
    int lo = 0;
#pragma unroll
    for (int step = floor_pow2(TOP_GROUPS); step > 0; step >>= 1) {
        const int at = lo + step - 1;
        lo += (at < len && l[at] < g) ? step : 0;
    }
    return (lo < len) & (l[min(lo, max(len - 1, 0))] == g);
}

// hga_resolve: for one (row, KV head): the union of its units' opened groups (each group once, with the
// mask of query heads that opened it), resolved against the row's partition of the slot cache: hits
// are stamped with this step; misses get slots in clock order from the hand, sparing those used
// recently (see recent_steps; the previous owner loses its slot). Misses past the partition's free
// slots are read from host memory by hga_attend without being cached. Run by hga_resolve (grid (KVH, B), block RNT), or fused
// into hga_select by the last unit of the KV head to finish (block SNT). Lists written by other blocks
// of the same kernel are read through L2 (__ldcg): L1 is not coherent within a kernel.
template <int THREADS>
__device__ void resolve_kv(const HgaParams& P, int b, int kvh, ResolveSmem& sm) {
    int& new_hand = sm.new_hand;
    int* lists_s = sm.lists;
    int* cnt_s = sm.cnt;
    int* hkey = sm.hkey;
    int* hfirst = sm.hfirst;
    unsigned* hmask = sm.hmask;
    if (P.pos[b] < 0) return;
    TRACE(TR_RESOLVE_BEGIN);
    const long long bk = bk_of(b, kvh);
    const int kge = P.kge;
    const int n_units = SHARED ? 1 : GQA;
    const int u0 = SHARED ? kvh : kvh * GQA;
    const int E = n_units * kge;
    const int* sel_g = P.sel_group + ((long long)b * UNITS + u0) * kge;
    const int* cnt_g = P.n_sel_group + (long long)b * UNITS + u0;
    // The units' lists, searched many times below: in shared memory when they fit.
    // Staged entries past a unit's count are INT_MAX (above every group): the searches below need no
    // bound but the list length.
    const bool staged = E <= RESOLVE_SMEM;
    if (staged) {
        for (int e = threadIdx.x; e < E; e += THREADS) {
            // Both loads issued at once: the entry does not wait for its count.
            const int c = __ldcg(&cnt_g[e / kge]), g = __ldcg(&sel_g[e]);
            lists_s[e] = e % kge < c ? g : 0x7fffffff;
        }
    }
    for (int h = threadIdx.x; h < n_units; h += THREADS) cnt_s[h] = __ldcg(&cnt_g[h]);
    __syncthreads();
    TRACE(TR_RESOLVE_STAGED);
    const int* sel = staged ? lists_s : sel_g;
    const int* cnt = cnt_s;
    int* state = P.part_state + bk * 4;
    const int step = state[0] + 1;
    const int hand = state[1];  // loaded with the step id: one latency, not one more after the listing
    const int last_misses = state[2];
    const int PS = P.part_slots;
    int* stamp = P.slot_stamp + bk * PS;
    int* owner = P.slot_owner + bk * PS;
    int* slot_of = P.slot_of + bk * P.cap_groups;
    const long long ue0 = bk * P.ucap;
    // Union in entry order (unit, then rank): an entry is kept where its group first occurs, with the
    // mask of the units that opened the group. Binary searches of the sorted lists (staged in shared
    // memory when they fit); a shared-memory hash table (group -> first entry, mask) for many units
    // (GQA > UNION_SEARCH_UNITS) whose lists fit it.
    int n_u = 0;
    if (E <= HASH_CAP / 2 && n_units > UNION_SEARCH_UNITS) {
        int tb = 32;
        while (tb < 2 * E) tb <<= 1;
        for (int x = threadIdx.x; x < tb; x += THREADS) { hkey[x] = -1; hfirst[x] = 0x7fffffff; hmask[x] = 0u; }
        __syncthreads();
        auto slot_of_group = [&](int g) -> int {
            int x = (int)(((unsigned)g * 2654435761u) >> 7) & (tb - 1);
            while (true) {
                const int k = atomicCAS(&hkey[x], -1, g);
                if (k == -1 || k == g) return x;
                x = (x + 1) & (tb - 1);
            }
        };
        for (int e = threadIdx.x; e < E; e += THREADS) {
            const int h = e / kge, r = e % kge;
            if (r >= cnt[h]) continue;
            const int x = slot_of_group(sel[e]);
            atomicMin(&hfirst[x], e);
            atomicOr(&hmask[x], SHARED ? 0xffffffffu : 1u << (h & 31));
        }
        __syncthreads();
        for (int e0 = 0; e0 < E; e0 += THREADS) {
            const int e = e0 + threadIdx.x;
            const int h = e / kge, r = e % kge;
            int x = -1;
            if (e < E && r < cnt[h]) x = slot_of_group(sel[e]);  // found: no insertion
            const bool first = x >= 0 && hfirst[x] == e;
            int total;
            const int idx = n_u + block_prefix_count(first, &total);
            n_u += total;
            if (first) {
                P.uni_group[ue0 + idx] = sel[e];
                if (idx < RESOLVE_SMEM) sm.uni[idx] = sel[e];
                // Masks wider than 32 units (GQA > 32) come from the list searches below.
                if (MW == 1) P.uni_mask[ue0 + idx] = hmask[x];
                else {
                    for (int m = 0; m < MW; ++m) {
                        unsigned w = 0u;
                        for (int h2 = 32 * m; h2 < min(n_units, 32 * m + 32); ++h2)
                            if (SHARED || list_has(sel + h2 * kge, cnt[h2], sel[e])) w |= 1u << (h2 & 31);
                        P.uni_mask[(ue0 + idx) * MW + m] = w;
                    }
                }
            }
        }
    } else {
        // Every entry searches every unit's sorted list (independent searches, unrolled): its mask, and
        // whether an earlier unit opened the group too.
        for (int e0 = 0; e0 < E; e0 += THREADS) {
            const int e = e0 + threadIdx.x;
            const int h = e / kge, r = e % kge;
            const int g = e < E && r < cnt[h] ? (staged ? lists_s[e] : __ldcg(&sel_g[e])) : -1;
            bool first = g >= 0;
            unsigned mask[MW];
#pragma unroll
            for (int m = 0; m < MW; ++m) mask[m] = SHARED ? 0xffffffffu : 0u;
            auto note = [&](int h2, bool has) {
                if (has) mask[h2 >> 5] |= 1u << (h2 & 31);
                first = first && !(has && h2 < h);
            };
            if (!SHARED && g >= 0 && staged) {
                // Straight-line code: the units' searches are independent chains of shared-memory loads
                // (all in flight together), with no branch. Branchy searches of one unit after another
                // took 3.6 µs of the 64K step on the H200, mostly waiting on instruction fetch.
#pragma unroll
                for (int h2 = 0; h2 < (SHARED ? 1 : GQA); ++h2) note(h2, (h2 == h) | list_has(lists_s + h2 * kge, kge, g));
            } else if (!SHARED && g >= 0) {
#pragma unroll 1
                for (int h2 = 0; h2 < n_units; ++h2) note(h2, h2 == h || list_has(sel + h2 * kge, cnt[h2], g));
            }
#ifdef HGA_TRACE
            if (e0 == 0) {
                __syncthreads();  // trace only: when every thread's first searches are done
                TRACE(TR_RESOLVE_SEARCHED);
            }
#endif
            int total;
            const int idx = n_u + block_prefix_count(first, &total);
            n_u += total;
            if (first) {
                P.uni_group[ue0 + idx] = g;
                if (idx < RESOLVE_SMEM) sm.uni[idx] = g;
#pragma unroll
                for (int m = 0; m < MW; ++m) P.uni_mask[(ue0 + idx) * MW + m] = mask[m];
            }
        }
    }
    __syncthreads();
    TRACE(TR_RESOLVE_UNION);
    // Hits keep their slot (stamped: not evictable this step); misses are listed. The union and the
    // miss list are read back from shared memory where they fit (this block wrote both).
    auto uni_at = [&](int i) { return i < RESOLVE_SMEM ? sm.uni[i] : P.uni_group[ue0 + i]; };
    int n_miss = 0;
    for (int i0 = 0; i0 < n_u; i0 += THREADS) {
        const int i = i0 + threadIdx.x;
        const int g = i < n_u ? uni_at(i) : -1;
        const int s = i < n_u ? slot_of[g] : -1;
        const bool miss = i < n_u && s < 0;
        int total;
        const int m = n_miss + block_prefix_count(miss, &total);
        n_miss += total;
        if (i < n_u) {
            if (s >= 0) stamp[s] = step;
            P.uni_slot[ue0 + i] = s >= 0 ? s : NO_SLOT;
            if (miss) {
                if (m < RESOLVE_SMEM) sm.miss[m] = i;
                else P.miss_list[ue0 + m] = i;
                if (host_record(P, bk, g) == nullptr) atomicAdd(P.error, 1);
            }
        }
    }
    if (threadIdx.x == 0) new_hand = hand;
    __syncthreads();
    TRACE(TR_RESOLVE_LISTED);
    // Two passes of the hand (the second only when the first leaves misses): slots not used in the last
    // `recent` steps, then any not used this step. A thread sees the same slots in both passes.
    const int recent = recent_steps(PS, last_misses);
    int assigned = 0;
    for (int pass = 0; pass < 2 && assigned < n_miss; ++pass) {
        const int spare = pass == 0 ? recent : 0;
        for (int scanned = 0; assigned < n_miss && scanned < PS; scanned += THREADS) {
            const int off = scanned + threadIdx.x;
            const int s = (hand + off) % PS;
            const int st = off < PS ? stamp[s] : step;
            const bool ok = st < 0 || step - st > spare;
            int total;
            const int m = assigned + block_prefix_count(ok, &total);
            if (ok && m < n_miss) {
                const int i = m < RESOLVE_SMEM ? sm.miss[m] : P.miss_list[ue0 + m];
                const int g = uni_at(i);
                const int old = owner[s];
                if (old >= 0) slot_of[old] = -1;
                owner[s] = g;
                slot_of[g] = s;
                stamp[s] = step;
                P.uni_slot[ue0 + i] = -(s + 1);
                if (m == n_miss - 1) new_hand = (s + 1) % PS;
            }
            assigned = min(n_miss, assigned + total);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        P.n_uni[bk] = n_u;
        state[0] = step;
        state[1] = new_hand;
        state[2] = n_miss;
        state[3] = n_miss - assigned;
    }
    TRACE(TR_RESOLVE_END);
}

extern "C" __global__ void __launch_bounds__(RNT) hga_resolve(HgaParams P) {
    STEP_PROLOGUE();
    __shared__ ResolveSmem sm;
    resolve_kv<RNT>(P, blockIdx.y, blockIdx.x, sm);
}

// ---------------------------------------------------------------------------------------------------
// hga_attend: split-K exact attention of HT query heads of one KV head over sinks, opened groups and
// local window + current chunk; fp32 online softmax. Opened groups that missed are read from their
// host records (mapped host memory: the transfer overlaps the attention of the other splits) and
// written into their slots on the way. Within a split every warp attends its own 16-token steps from
// registers (keys and values loaded straight into tensor-core fragments, V transposed by movmatrix), so
// the main loop has no block barrier; the warps are combined once at the end. The last split of a (row,
// KV head, head tile) to finish merges the splits into the output. grid (SK, KVH * HTILES, B), block NT.
// Virtual token order: [0, S) sinks | [S, S + U*G) union groups | local_start*C ..= pos.
struct TokenRef {
    const elem_t* k;
    const elem_t* v;
    long long fill;  // element offset of the token's key row in `slots` to fill, or -1
};

__device__ __forceinline__ TokenRef token_ref(const HgaParams& P, int b, int kvh, int t, int S, int U, int local0) {
    TokenRef r;
    r.fill = -1;
    if (t >= S && t < S + U * G) {
        const int u = (t - S) / G, j = (t - S) % G;
        const long long bk = bk_of(b, kvh);
        const int us = P.uni_slot[bk * P.ucap + u];
        if (us >= 0) {
            const elem_t* base = P.slots + (bk * P.part_slots + us) * (2 * G * D) + (long long)j * D;
            r.k = base;
            r.v = base + G * D;
        } else {
            const elem_t* rec = host_record(P, bk, P.uni_group[bk * P.ucap + u]);
            r.k = rec == nullptr ? nullptr : rec + (long long)j * D;
            r.v = rec == nullptr ? nullptr : rec + (long long)(G + j) * D;
            if (us != NO_SLOT && rec != nullptr) r.fill = (bk * P.part_slots + (-us - 1)) * (2 * G * D) + (long long)j * D;
        }
    } else {
        const int p = t < S ? t : local0 + (t - S - U * G);
        const long long off = win_base(b, kvh) + win_row(p) * D;
        r.k = P.win_k + off;
        r.v = P.win_v + off;
    }
    return r;
}


// Which of the block's heads h0 .. h0 + HT - 1 may attend virtual token tok (bit h for head h0 + h),
// and its key/value rows. Zero bits past the split's end and for opened groups without a record.
__device__ __forceinline__ unsigned token_heads(const HgaParams& P, int b, int kvh, int h0, int tok, int t_end, int S,
                                                int U, int local0, TokenRef* ref) {
    constexpr unsigned ALL = (1u << HT) - 1u;
    if (tok >= t_end) {
        *ref = TokenRef{nullptr, nullptr, -1};
        return 0u;
    }
    *ref = token_ref(P, b, kvh, tok, S, U, local0);
    if (tok < S || tok >= S + U * G) return ALL;
    if (ref->k == nullptr) return 0u;
    const long long ue = bk_of(b, kvh) * P.ucap + (tok - S) / G;
    if (MW == 1) return (P.uni_mask[ue] >> h0) & ALL;
    unsigned bits = 0u;
#pragma unroll
    for (int h = 0; h < HT; ++h) bits |= ((P.uni_mask[ue * MW + ((h0 + h) >> 5)] >> ((h0 + h) & 31)) & 1u) << h;
    return bits;
}

// The warps' outputs are combined in one round (each warp's to its own rows, then summed) when
// COMBINE_ROWS (prelude) is NWARPS; when it is 1, one warp after another adds its own into one row per
// head.

// Shared memory of attend_split.
struct AttendSmem {
    float wm[NWARPS][8], wl[NWARPS][8];
    __align__(16) float o[COMBINE_ROWS][HT][D];
    float2 blk[HT];
    int last;
    float wgt[HT][SK];
};

// Split `split` of head tile y (KV head y / HTILES) of row b.
// for the KV head's resolve.
__device__ void attend_split(const HgaParams& P, int split, int y, int b, AttendSmem& sm) {
    float (*wm_s)[8] = sm.wm;
    float (*wl_s)[8] = sm.wl;
    float2* blk_s = sm.blk;
    int& last_s = sm.last;
    float (*wgt_s)[SK] = sm.wgt;
    const int kvh = y / HTILES, h0 = (y % HTILES) * HT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, fg = lane >> 2, ft = lane & 3;
    const long long bk = bk_of(b, kvh);
    TRACE(TR_ATTEND_BEGIN);
    // The position, the union's size and the queries are loaded together (all are valid memory for an
    // inactive row too): one memory latency before the first token instead of three.
    const int pos = P.pos[b];
    const int U = P.n_uni[bk];
    // The queries as B fragments (column fg = head h0 + fg; columns past HT are zero).
    unsigned qb[WORDS];
    if (fg < HT) load_quarter(P.q + ((long long)b * QH + kvh * GQA + h0 + fg) * D, ft, qb);
    else {
#pragma unroll
        for (int i = 0; i < WORDS; ++i) qb[i] = 0u;
    }
    if (pos < 0) return;
    const Windows w = windows_at(pos);
    const int S = w.sinks_end * C;
    const int local0 = w.local_start * C;
    const int n_total = S + U * G + (pos + 1 - local0);
    const int steps = (n_total + 15) / 16;
    const int per = (steps + SK - 1) / SK;
    const int t_begin = split * per * 16, t_end = min(n_total, (split + 1) * per * 16);
    const int my_steps = t_end > t_begin ? (t_end - t_begin + 15) / 16 : 0;
    if (split == 0 && h0 == 0 && threadIdx.x == 0) P.n_att[bk] = n_total;
    TRACE_AFTER(TR_ATTEND_LOADED, n_total + (int)qb[0]);
    // Every warp runs its own online softmax over its 16-token steps (warp, warp + NWARPS, ... of the
    // split): no block barrier until the warps' results are combined. Tokens and dimensions are the M
    // side of the tiles, the block's heads the N side: Sᵀ = K·Qᵀ, then Oᵀ += Vᵀ·Pᵀ. Lane (fg, ft) keeps
    // heads 2ft and 2ft + 1: their softmax state, and in m tile i their output dimensions
    // quarter_dim(fg / 2, 2i, fg % 2) (c0, c1) and quarter_dim(fg / 2, 2i + 1, fg % 2) (c2, c3).
    float acc[WORDS / 2][4];
#pragma unroll
    for (int i = 0; i < WORDS / 2; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    float m_r[2] = {NEG_INF, NEG_INF}, l_r[2] = {0.f, 0.f};
    // A pass's token references (union entry -> slot or host record) are resolved while the pass
    // before it loads its rows: one memory latency per pass on the critical path instead of two.
    TokenRef refs[PASS][2];
    unsigned heads_next[PASS][2];
    auto resolve_pass = [&](int s0) {
#pragma unroll
        for (int p = 0; p < PASS; ++p)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int tok = t_begin + 16 * (s0 + p) + 8 * half + fg;
                refs[p][half] = TokenRef{nullptr, nullptr, -1};
                heads_next[p][half] = s0 + p < my_steps ? token_heads(P, b, kvh, h0, tok, t_end, S, U, local0, &refs[p][half]) : 0u;
            }
    };
    resolve_pass(warp * PASS);
    for (int s0 = warp * PASS; s0 < my_steps; s0 += NWARPS * PASS) {
        // Lane (fg, ft) loads its quarter of tokens fg and 8 + fg of each step: keys and values.
        unsigned kw[PASS][2][WORDS], vw[PASS][2][WORDS];
        unsigned heads[PASS][2];
        long long fill[PASS][2];
#pragma unroll
        for (int p = 0; p < PASS; ++p) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const TokenRef ref = refs[p][half];
                heads[p][half] = heads_next[p][half];
                fill[p][half] = ref.fill;
                if (ref.k != nullptr) {
                    load_quarter(ref.k, ft, kw[p][half]);
                    load_quarter(ref.v, ft, vw[p][half]);
                } else {
                    // Rows past the end (or without a record) are zero and masked: 0 * garbage could be NaN.
#pragma unroll
                    for (int i = 0; i < WORDS; ++i) kw[p][half][i] = vw[p][half][i] = 0u;
                }
            }
        }
        if (s0 + NWARPS * PASS < my_steps) resolve_pass(s0 + NWARPS * PASS);
        // Missed rows go into their slots (after the next pass's references: a store waits for its data).
#pragma unroll
        for (int p = 0; p < PASS; ++p)
#pragma unroll
            for (int half = 0; half < 2; ++half)
                if (fill[p][half] >= 0) {
                    store_quarter(P.slots + fill[p][half], ft, kw[p][half]);
                    store_quarter(P.slots + fill[p][half] + G * D, ft, vw[p][half]);
                }
#pragma unroll
        for (int p = 0; p < PASS; ++p) {
            if (s0 + p >= my_steps) break;
            // Sᵀ: c0/c1 are tokens fg's scores for heads 2ft, 2ft + 1; c2/c3 token 8 + fg's.
            float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ++ks)
                mma_16816(c, kw[p][0][2 * ks], kw[p][1][2 * ks], kw[p][0][2 * ks + 1], kw[p][1][2 * ks + 1], qb[2 * ks],
                          qb[2 * ks + 1]);
            float x[4];
            x[0] = (heads[p][0] >> (2 * ft)) & 1u ? c[0] * SCALE : NEG_INF;
            x[1] = (heads[p][0] >> (2 * ft + 1)) & 1u ? c[1] * SCALE : NEG_INF;
            x[2] = (heads[p][1] >> (2 * ft)) & 1u ? c[2] * SCALE : NEG_INF;
            x[3] = (heads[p][1] >> (2 * ft + 1)) & 1u ? c[3] * SCALE : NEG_INF;
            // Online softmax of heads 2ft + j (j = 0, 1): the eight lanes of column ft hold its 16 scores.
            float pr[4], alpha[2];
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                float mx = fmaxf(x[j], x[j + 2]);
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
                const float m_new = fmaxf(m_r[j], mx);
                pr[j] = m_new == NEG_INF ? 0.f : expf(x[j] - m_new);
                pr[j + 2] = m_new == NEG_INF ? 0.f : expf(x[j + 2] - m_new);
                float sum = pr[j] + pr[j + 2];
                sum += __shfl_xor_sync(0xffffffffu, sum, 4);
                sum += __shfl_xor_sync(0xffffffffu, sum, 8);
                sum += __shfl_xor_sync(0xffffffffu, sum, 16);
                alpha[j] = m_r[j] == NEG_INF ? (m_new == NEG_INF ? 1.f : 0.f) : expf(m_r[j] - m_new);
                l_r[j] = l_r[j] * alpha[j] + sum;
                m_r[j] = m_new;
            }
            // Pᵀ as B fragments: the probabilities of tokens 0..7 (and 8..15) for heads 2ft, 2ft + 1,
            // transposed to head fg's probabilities of tokens 2ft, 2ft + 1.
            const unsigned pb0 = transpose8x8(pack_elems(pr[0], pr[1]));
            const unsigned pb1 = transpose8x8(pack_elems(pr[2], pr[3]));
            // Oᵀ += Vᵀ·Pᵀ: m tile i is the dimensions of words 2i (rows 0..7) and 2i + 1 (rows 8..15).
#pragma unroll
            for (int i = 0; i < WORDS / 2; ++i) {
                acc[i][0] *= alpha[0];
                acc[i][1] *= alpha[1];
                acc[i][2] *= alpha[0];
                acc[i][3] *= alpha[1];
                mma_16816(acc[i], transpose8x8(vw[p][0][2 * i]), transpose8x8(vw[p][0][2 * i + 1]),
                          transpose8x8(vw[p][1][2 * i]), transpose8x8(vw[p][1][2 * i + 1]), pb0, pb1);
            }
        }
    }
    TRACE_AFTER(TR_ATTEND_TOKENS, __float_as_int(l_r[0] + acc[0][0]));
    // The block's split: its warps' partial results rescaled to the block's maximum and summed, in warp
    // order (the same sum every run).
    if (fg == 0) {
#pragma unroll
        for (int j = 0; j < 2; ++j)
            if (2 * ft + j < HT) { wm_s[warp][2 * ft + j] = m_r[j]; wl_s[warp][2 * ft + j] = l_r[j]; }
    }
    __syncthreads();
    // The block's maximum and sum per head first; each lane then rescales its heads to that maximum.
    if (threadIdx.x < HT) {
        const int h = threadIdx.x;
        float m = NEG_INF;
        for (int v = 0; v < NWARPS; ++v) m = fmaxf(m, wm_s[v][h]);
        float l = 0.f;
        for (int v = 0; v < NWARPS; ++v) l += wm_s[v][h] == NEG_INF ? 0.f : wl_s[v][h] * expf(wm_s[v][h] - m);
        blk_s[h] = make_float2(m, l);
    }
    __syncthreads();
    float sc[2];
#pragma unroll
    for (int j = 0; j < 2; ++j)
        sc[j] = 2 * ft + j >= HT || m_r[j] == NEG_INF ? 0.f : expf(m_r[j] - blk_s[2 * ft + j].x);
    // Warp v's rescaled output goes to row v (or, one warp at a time, is added to row 0); the sum over
    // the warps is in warp order either way.
    for (int v = 0; v < NWARPS; ++v) {
        if (COMBINE_ROWS > 1 || warp == v) {
            float (*o_s)[D] = sm.o[COMBINE_ROWS > 1 ? warp : 0];
#pragma unroll
            for (int i = 0; i < WORDS / 2; ++i)
#pragma unroll
                for (int r = 0; r < 4; ++r) {
                    const int h = 2 * ft + (r & 1);
                    const int dd = quarter_dim(fg >> 1, 2 * i + (r >> 1), fg & 1);
                    if (h < HT) o_s[h][dd] = (COMBINE_ROWS > 1 || v == 0 ? 0.f : o_s[h][dd]) + acc[i][r] * sc[r & 1];
                }
        }
        __syncthreads();
        if (COMBINE_ROWS > 1) break;
    }
    TRACE(TR_ATTEND_COMBINED);
    for (int x = threadIdx.x; x < HT * D; x += NT) {
        const long long row = ((long long)b * QH + kvh * GQA + h0 + x / D) * SK + split;
        float o = sm.o[0][x / D][x % D];
#pragma unroll
        for (int v = 1; v < COMBINE_ROWS; ++v) o += sm.o[v][x / D][x % D];
        P.part_acc[row * D + x % D] = o;
    }
    if (threadIdx.x < HT) {
        const long long row = ((long long)b * QH + kvh * GQA + h0 + threadIdx.x) * SK + split;
        *(float2*)&P.part_ml[row * 2] = blk_s[threadIdx.x];
    }
    TRACE(TR_ATTEND_PARTIALS);
    // The last split to finish merges (its partials' writes are ordered before its counter update).
    int* done = P.done + (long long)b * (KVH * HTILES) + y;
    if (!last_to_arrive(done, SK, &last_s)) return;
    TRACE(TR_MERGE_BEGIN);
    // Each thread merges four consecutive output elements. The partial accumulators of the first
    // MERGE_PRE splits are loaded before the split weights (exp(m_s - m) / l per head) are computed,
    // so the two loads' latencies overlap; later rounds (HT * D > 4 * NT) load theirs at once too.
    constexpr int MERGE_PRE = SK < 16 ? SK : 16;
    constexpr int X4 = HT * D / 4;
    const long long row0 = ((long long)b * QH + kvh * GQA + h0) * SK;
    float4 pre[MERGE_PRE];
    auto load_pre = [&](int x) {
        const long long at = (row0 + (long long)(4 * x / D) * SK) * D + 4 * x % D;
#pragma unroll
        for (int s = 0; s < MERGE_PRE; ++s) pre[s] = __ldcg((const float4*)&P.part_acc[at + (long long)s * D]);
    };
    if (threadIdx.x < X4) load_pre(threadIdx.x);
    // Warp w weighs the splits of heads w, w + NWARPS, ..., lane s holding split s (+ 32j).
    constexpr int SPL = (SK + 31) / 32;
    for (int h = warp; h < HT; h += NWARPS) {
        float2 ml[SPL];
        float m = NEG_INF;
#pragma unroll
        for (int j = 0; j < SPL; ++j) {
            const int s = lane + 32 * j;
            ml[j] = s < SK ? __ldcg((const float2*)&P.part_ml[(row0 + h * SK + s) * 2]) : make_float2(NEG_INF, 0.f);
            m = fmaxf(m, ml[j].x);
        }
        m = warp_max(m);
        float e[SPL], l = 0.f;
#pragma unroll
        for (int j = 0; j < SPL; ++j) {
            e[j] = ml[j].x == NEG_INF ? 0.f : expf(ml[j].x - m);
            l += e[j] * ml[j].y;
        }
        l = warp_sum(l);
#pragma unroll
        for (int j = 0; j < SPL; ++j)
            if (lane + 32 * j < SK) wgt_s[h][lane + 32 * j] = e[j] / l;
    }
    __syncthreads();
    for (int x = threadIdx.x; x < X4; x += NT) {
        if (x != threadIdx.x) load_pre(x);
        const int h = 4 * x / D, d = 4 * x % D;
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
        auto add = [&](int s, float4 v) {
            const float wv = wgt_s[h][s];
            o.x += wv * v.x;
            o.y += wv * v.y;
            o.z += wv * v.z;
            o.w += wv * v.w;
        };
#pragma unroll
        for (int s = 0; s < MERGE_PRE; ++s) add(s, pre[s]);
#pragma unroll
        for (int s = MERGE_PRE; s < SK; ++s) add(s, __ldcg((const float4*)&P.part_acc[(row0 + (long long)h * SK + s) * D + d]));
        *(uint2*)&P.out[((long long)b * QH + kvh * GQA + h0 + h) * D + d] =
            make_uint2(pack_elems(o.x, o.y), pack_elems(o.z, o.w));
    }
    TRACE(TR_MERGE_END);
    if (threadIdx.x == 0) *done = 0;
}

extern "C" __global__ void __launch_bounds__(NT) hga_attend(HgaParams P) {
    STEP_PROLOGUE();
    __shared__ AttendSmem sm;
    attend_split(P, blockIdx.x, blockIdx.y, blockIdx.z, sm);
}
