// ---------------------------------------------------------------------------------------------------
// Kernels of one decode step (DESIGN.md §2). Everything above this line is the generated prelude: the
// compile-time constants of the variant. Layouts (row-major, B = sequences in the batch):
//   q          [B][QH][D] elem            out        [B][QH][D] elem
//   win_k/v    [B][KVH][WIN_CHUNKS*C][D]  window: chunk c < KF in slot c, else slot KF + c % (KL+1)
//   chunk_sum  [B][KVH][cap_chunks][SV*D] f32     group_sum [B][KVH][cap_groups][SV*D] f32
//   host_kv    [B][KVH][cap_groups][2][G][D] elem (group-contiguous: G keys then G values)
//   slots      [n_slots][2][G][D] elem    slot_of [B][KVH][cap_groups] (-1: not cached)
// ---------------------------------------------------------------------------------------------------

typedef unsigned short elem_t;

struct HgaParams {
    const int* pos;           // [B] position of this step's query (tokens 0..=pos exist)
    elem_t* win_k;
    elem_t* win_v;
    float* chunk_sum;
    float* group_sum;
    const elem_t* q;
    float* chunk_score;       // [B][QH][cap_chunks]
    float* chunk_mass;        // [B][KVH][cap_chunks]
    int* sel_chunk;           // [B][UNITS][kce] global chunk indices, best first
    int* n_sel_chunk;         // [B][UNITS]
    int* group_cand;          // [B][UNITS][kce*GPC] candidate groups, ascending
    float* group_score;       // [B][QH][kce*GPC]
    float* group_mass;        // [B][KVH][kce*GPC]
    int* sel_group;           // [B][UNITS][kge] global group indices, best first
    int* n_sel_group;         // [B][UNITS]
    int* uni_group;           // [B][KVH][ucap] union of the KV head's opened groups
    int* uni_slot;            // [B][KVH][ucap]
    unsigned* uni_mask;       // [B][KVH][ucap][MW] query heads (of the KV head) that opened it
    int* n_uni;               // [B][KVH]
    int* slot_of;             // [B][KVH][cap_groups]
    long long* slot_owner;    // [n_slots] flat (b, kvh, group) index or -1
    int* slot_stamp;          // [n_slots] last step that used the slot
    int* fetch_state;         // [0] miss counter [1] misses of this step [2] clock hand [3] error flag
    int* miss_list;           // [B*KVH*ucap] flat union entries that missed
    const elem_t* host_kv;    // mapped pinned host memory (or any device-readable buffer)
    elem_t* slots;
    float* part_ml;           // [B][QH][SK][2] running max and sum of each split
    float* part_acc;          // [B][QH][SK][D] unnormalized output of each split
    elem_t* out;
    int batch;
    int cap_chunks;           // chunk capacity per sequence
    int cap_groups;           // = cap_chunks * GPC
    int n_slots;
    int step;                 // step id, stamps slots used by this step
    int kce;                  // min(TOP_CHUNKS, cap_chunks)
    int kge;                  // min(TOP_GROUPS, kce * GPC)
    int ucap;                 // union capacity per KV head: kge (shared) or GQA * kge
};

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

// The best `k` of `vals[0..n)` (higher first, then lower index) into out[0..k'), k' = min(k, n).
// Round r picks the best element ranked strictly after the pick of round r-1: no writes to `vals`.
__device__ int block_topk(const float* vals, int n, int k, int* out, int out_offset) {
    __shared__ float rv[32];
    __shared__ int ri[32];
    const int cnt = min(k, n);
    float pv = POS_INF;
    int pi = -1;
    for (int r = 0; r < cnt; ++r) {
        float bv = NEG_INF;
        int bi = 0x7fffffff;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float v = vals[i];
            const bool after = v < pv || (v == pv && i > pi);
            if (after && better(v, i, bv, bi)) { bv = v; bi = i; }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
        }
        __syncthreads();
        if ((threadIdx.x & 31) == 0) { rv[threadIdx.x >> 5] = bv; ri[threadIdx.x >> 5] = bi; }
        __syncthreads();
        bv = rv[0];
        bi = ri[0];
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (better(rv[w], ri[w], bv, bi)) { bv = rv[w]; bi = ri[w]; }
        if (threadIdx.x == 0) out[r] = bi + out_offset;
        pv = bv;
        pi = bi;
    }
    return cnt;
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

// ---------------------------------------------------------------------------------------------------
// hga_append: writes this step's keys and values ([B][KVH][D], keys after RoPE) at pos[b] into the
// window buffer. grid (KVH, B), block D.
extern "C" __global__ void __launch_bounds__(D) hga_append(HgaParams P, const elem_t* k_new, const elem_t* v_new) {
    const int kvh = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    const int pos = P.pos[b];
    const long long src = ((long long)b * KVH + kvh) * D + d;
    const long long dst = win_base(b, kvh) + win_row(pos) * D + d;
    P.win_k[dst] = k_new[src];
    P.win_v[dst] = v_new[src];
}

// ---------------------------------------------------------------------------------------------------
// hga_summarize: builds the chunk summary and the GPC group summaries of chunk close_chunk[b] (skipped
// when < 0) from the window buffer. grid (KVH, B), block D. Sums run over tokens in order, as the CPU.
__device__ void summarize_span(const elem_t* keys, int n, int start, float* out) {
    const int d = threadIdx.x;
#if SCORE_MINMAX
    float lo = POS_INF, hi = NEG_INF;
    for (int t = 0; t < n; ++t) {
        const float x = ld_elem(keys[(long long)win_row(start + t) * D + d]);
        lo = fminf(lo, x);
        hi = fmaxf(hi, x);
    }
    out[d] = lo;
    out[D + d] = hi;
#else
    float s = 0.f;
    for (int t = 0; t < n; ++t) s += ld_elem(keys[(long long)win_row(start + t) * D + d]);
    out[d] = s;
#if SCORE_MIXED
    // Anchor: pre-RoPE keys (rotated back by their own positions) summed, rotated to the span's centre.
    __syncthreads();
    if (d < PAIRS && !HIGH_FREQ[d]) {
        int a, bd;
        pair_dims(d, &a, &bd);
        const double f = INV_FREQ[d];
        float ra = 0.f, rb = 0.f;
        for (int t = 0; t < n; ++t) {
            const long long row = (long long)win_row(start + t) * D;
            const double xa = ld_elem(keys[row + a]), xb = ld_elem(keys[row + bd]);
            double sn, cs;
            sincos(-(double)(start + t) * f, &sn, &cs);
            ra += (float)(xa * cs - xb * sn);
            rb += (float)(xa * sn + xb * cs);
        }
        double sn, cs;
        sincos(((double)start + ((double)n - 1.0) / 2.0) * f, &sn, &cs);
        const double da = ra, db = rb;
        out[a] = (float)(da * cs - db * sn);
        out[bd] = (float)(da * sn + db * cs);
    }
    __syncthreads();
#endif
#endif
}

extern "C" __global__ void __launch_bounds__(D) hga_summarize(HgaParams P, const int* close_chunk) {
    const int kvh = blockIdx.x, b = blockIdx.y;
    const int c = close_chunk[b];
    if (c < 0) return;
    const elem_t* keys = P.win_k + win_base(b, kvh);
    const long long seq_head = (long long)b * KVH + kvh;
    summarize_span(keys, C, c * C, P.chunk_sum + (seq_head * P.cap_chunks + c) * (SV * D));
    for (int j = 0; j < GPC; ++j) {
        const long long g = (long long)c * GPC + j;
        summarize_span(keys, G, c * C + j * G, P.group_sum + (seq_head * P.cap_groups + g) * (SV * D));
    }
}

// ---------------------------------------------------------------------------------------------------
// Score of one summary against one query head, by a warp (lanes stride the dimensions); every lane gets
// the unscaled sum.
__device__ __forceinline__ float warp_score(const float* q, const float* s) {
    float acc = 0.f;
#if SCORE_MINMAX
    for (int d = threadIdx.x & 31; d < D; d += 32) acc += fmaxf(q[d] * s[d], q[d] * s[D + d]);
#else
    for (int d = threadIdx.x & 31; d < D; d += 32) acc += q[d] * s[d];
#endif
    return warp_sum(acc);
}

// hga_chunk_score: scores of the candidate chunks against every query head of a KV head.
// grid (ceil(max candidates / CHUNK_TILE), KVH, B), block NT.
extern "C" __global__ void __launch_bounds__(NT) hga_chunk_score(HgaParams P) {
    __shared__ float q_s[GQA_TILE_Q][D];
    const int kvh = blockIdx.y, b = blockIdx.z;
    const Windows w = windows_at(P.pos[b]);
    const int n_cand = w.local_start - w.sinks_end;
    const int i0 = blockIdx.x * CHUNK_TILE;
    if (i0 >= n_cand) return;
    const int i1 = min(n_cand, i0 + CHUNK_TILE);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int h0 = 0; h0 < GQA; h0 += GQA_TILE_Q) {
        __syncthreads();
        for (int x = threadIdx.x; x < GQA_TILE_Q * D; x += NT) {
            const int h = h0 + x / D;
            q_s[x / D][x % D] = h < GQA ? ld_elem(P.q[((long long)b * QH + kvh * GQA + h) * D + x % D]) : 0.f;
        }
        __syncthreads();
        for (int i = i0 + warp; i < i1; i += NT / 32) {
            const int c = w.sinks_end + i;
            const float* s = P.chunk_sum + (((long long)b * KVH + kvh) * P.cap_chunks + c) * (SV * D);
            for (int h = 0; h < GQA_TILE_Q && h0 + h < GQA; ++h) {
                const float v = warp_score(q_s[h], s) * SCALE;
                if (lane == 0) P.chunk_score[((long long)b * QH + kvh * GQA + h0 + h) * P.cap_chunks + i] = v;
            }
        }
    }
}

// Summed softmax mass over the GQA query heads of KV head kvh (shared routing), written to mass[0..n).
__device__ void shared_mass(const float* scores, long long head_stride, int n, float* mass, float* red) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) mass[i] = 0.f;
    for (int h = 0; h < GQA; ++h) {
        const float* s = scores + h * head_stride;
        float m = NEG_INF;
        for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, s[i]);
        m = block_max(m, red);
        float z = 0.f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) z += expf(s[i] - m);
        z = block_sum(z, red);
        for (int i = threadIdx.x; i < n; i += blockDim.x) mass[i] += expf(s[i] - m) / z;
    }
    __syncthreads();
}

// hga_chunk_select: top TOP_CHUNKS candidate chunks per routing unit (query head, or KV head when
// shared). grid (UNITS, B), block NT.
extern "C" __global__ void __launch_bounds__(NT) hga_chunk_select(HgaParams P) {
    __shared__ float red[32];
    const int u = blockIdx.x, b = blockIdx.y;
    const Windows w = windows_at(P.pos[b]);
    const int n_cand = w.local_start - w.sinks_end;
    const long long ou = (long long)b * UNITS + u;
#if SHARED
    float* vals = P.chunk_mass + ((long long)b * KVH + u) * P.cap_chunks;
    shared_mass(P.chunk_score + ((long long)b * QH + u * GQA) * P.cap_chunks, P.cap_chunks, n_cand, vals, red);
#else
    const float* vals = P.chunk_score + ((long long)b * QH + u) * P.cap_chunks;
#endif
    const int cnt = block_topk(vals, n_cand, P.kce, P.sel_chunk + ou * P.kce, w.sinks_end);
    if (threadIdx.x == 0) P.n_sel_chunk[ou] = cnt;
}

// hga_group_select: the groups of the selected chunks (ascending), scored, top TOP_GROUPS per unit.
// grid (UNITS, B), block NT.
extern "C" __global__ void __launch_bounds__(NT) hga_group_select(HgaParams P) {
    __shared__ float red[32];
    __shared__ float q_s[GQA_TILE_Q][D];
    const int u = blockIdx.x, b = blockIdx.y;
    const long long ou = (long long)b * UNITS + u;
    const int kvh = SHARED ? u : u / GQA;
    const int nsel = P.n_sel_chunk[ou];
    const int* sel = P.sel_chunk + ou * P.kce;
    int* cand = P.group_cand + ou * (long long)(P.kce * GPC);
    // Candidate position of a selected chunk = its rank among the selected chunks (ascending order).
    for (int r = threadIdx.x; r < nsel; r += NT) {
        const int c = sel[r];
        int rank = 0;
        for (int j = 0; j < nsel; ++j) rank += sel[j] < c;
        for (int j = 0; j < GPC; ++j) cand[rank * GPC + j] = c * GPC + j;
    }
    const int n = nsel * GPC;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kg = P.kce * GPC;
    const float* table = P.group_sum + ((long long)b * KVH + kvh) * P.cap_groups * (long long)(SV * D);
    for (int h0 = 0; h0 < UNIT_HEADS; h0 += GQA_TILE_Q) {
        __syncthreads();
        for (int x = threadIdx.x; x < GQA_TILE_Q * D; x += NT) {
            const int h = h0 + x / D;
            const int qh = SHARED ? u * GQA + h : u;
            q_s[x / D][x % D] = h < UNIT_HEADS ? ld_elem(P.q[((long long)b * QH + qh) * D + x % D]) : 0.f;
        }
        __syncthreads();
        for (int i = warp; i < n; i += NT / 32) {
            const float* s = table + (long long)cand[i] * (SV * D);
            for (int h = 0; h < GQA_TILE_Q && h0 + h < UNIT_HEADS; ++h) {
                const float v = warp_score(q_s[h], s) * SCALE;
                const int qh = SHARED ? u * GQA + h0 + h : u;
                if (lane == 0) P.group_score[((long long)b * QH + qh) * kg + i] = v;
            }
        }
    }
    __syncthreads();
#if SHARED
    float* vals = P.group_mass + ((long long)b * KVH + u) * kg;
    shared_mass(P.group_score + ((long long)b * QH + u * GQA) * kg, kg, n, vals, red);
#else
    const float* vals = P.group_score + ((long long)b * QH + u) * kg;
#endif
    int* out = P.sel_group + ou * P.kge;
    const int cnt = block_topk(vals, n, P.kge, out, 0);
    __syncthreads();
    // block_topk wrote candidate positions; turn them into global group indices.
    for (int r = threadIdx.x; r < cnt; r += NT) out[r] = cand[out[r]];
    if (threadIdx.x == 0) P.n_sel_group[ou] = cnt;
}

// ---------------------------------------------------------------------------------------------------
// Block-wide exclusive count of `ok` over threads below this one; `*total` gets the block's count.
// Every thread of the block must call it.
__device__ int block_prefix_count(bool ok, int* total) {
    __shared__ int warp_cnt[32];
    const unsigned ball = __ballot_sync(0xffffffffu, ok);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) warp_cnt[warp] = __popc(ball);
    __syncthreads();
    int before = __popc(ball & ((1u << lane) - 1u)), all = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
        if (w < warp) before += warp_cnt[w];
        all += warp_cnt[w];
    }
    *total = all;
    return before;
}

// hga_fetch_resolve: the union of a KV head's opened groups (with the mask of query heads that opened
// each), resolved against the slot cache: hit -> slot (stamped with this step), miss -> miss list.
// grid (KVH, B), block NT.
extern "C" __global__ void __launch_bounds__(NT) hga_fetch_resolve(HgaParams P) {
    const int kvh = blockIdx.x, b = blockIdx.y;
    const long long bk = (long long)b * KVH + kvh;
    const int kge = P.kge;
    const int n_units = SHARED ? 1 : GQA;
    const int u0 = SHARED ? kvh : kvh * GQA;
    const int E = n_units * kge;
    const int* sel = P.sel_group + ((long long)b * UNITS + u0) * kge;
    const int* cnt = P.n_sel_group + (long long)b * UNITS + u0;
    int base = 0;
    // Rounds of NT entries; an entry is kept where its group first occurs (entry order).
    for (int e0 = 0; e0 < E; e0 += NT) {
        const int e = e0 + threadIdx.x;
        const bool valid = e < E && (e % kge) < cnt[e / kge];
        const int g = valid ? sel[e] : -1;
        bool first = valid;
        for (int e2 = 0; e2 < e && first; ++e2)
            if ((e2 % kge) < cnt[e2 / kge] && sel[e2] == g) first = false;
        int total;
        const int idx = base + block_prefix_count(first, &total);
        base += total;
        if (!first) continue;
        unsigned mask[MW];
#pragma unroll
        for (int m = 0; m < MW; ++m) mask[m] = SHARED ? 0xffffffffu : 0u;
        if (!SHARED) {
            for (int e2 = e; e2 < E; ++e2) {
                const int h2 = e2 / kge;
                if ((e2 % kge) < cnt[h2] && sel[e2] == g) mask[h2 >> 5] |= 1u << (h2 & 31);
            }
        }
        const long long ue = bk * P.ucap + idx;
        P.uni_group[ue] = g;
#pragma unroll
        for (int m = 0; m < MW; ++m) P.uni_mask[ue * MW + m] = mask[m];
        const int s = P.slot_of[bk * P.cap_groups + g];
        P.uni_slot[ue] = s;
        if (s >= 0) {
            P.slot_stamp[s] = P.step;
        } else {
            const int m = atomicAdd(&P.fetch_state[0], 1);
            P.miss_list[m] = (int)ue;
        }
    }
    if (threadIdx.x == 0) P.n_uni[bk] = base;
}

// hga_fetch_assign: gives each miss a slot not used by this step, clock order from the hand; the
// slot's previous owner loses it. grid (1), block NT.
extern "C" __global__ void __launch_bounds__(NT) hga_fetch_assign(HgaParams P) {
    __shared__ int new_hand;
    const int n = P.fetch_state[0];
    const int hand = P.fetch_state[2];
    if (threadIdx.x == 0) new_hand = hand;
    int assigned = 0;
    for (int scanned = 0; assigned < n && scanned < P.n_slots; scanned += NT) {
        const int off = scanned + threadIdx.x;
        const int s = (hand + off) % P.n_slots;
        const bool ok = off < P.n_slots && P.slot_stamp[s] != P.step;
        int total;
        const int m = assigned + block_prefix_count(ok, &total);
        if (ok && m < n) {
            const int ue = P.miss_list[m];
            const long long bk = ue / P.ucap;
            const long long flat = bk * P.cap_groups + P.uni_group[ue];
            const long long old = P.slot_owner[s];
            if (old >= 0) P.slot_of[old] = -1;
            P.slot_owner[s] = flat;
            P.slot_of[flat] = s;
            P.slot_stamp[s] = P.step;
            P.uni_slot[ue] = s;
            if (m == n - 1) new_hand = (s + 1) % P.n_slots;
        }
        assigned = min(n, assigned + total);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        if (assigned < n) P.fetch_state[3] = 1;
        P.fetch_state[1] = assigned;
        P.fetch_state[0] = 0;
        P.fetch_state[2] = new_hand;
    }
}

// hga_fetch_gather: copies each missed group (keys then values, 2*G*D elements, contiguous on both
// sides) from host memory into its slot. grid (any), block NT; blocks stride over the misses.
extern "C" __global__ void __launch_bounds__(NT) hga_fetch_gather(HgaParams P) {
    const int n = P.fetch_state[1];
    constexpr int VECS = 2 * G * D * 2 / 16;
    for (int m = blockIdx.x; m < n; m += gridDim.x) {
        const int ue = P.miss_list[m];
        const long long bk = ue / P.ucap;
        const long long flat = bk * P.cap_groups + P.uni_group[ue];
        const uint4* src = (const uint4*)(P.host_kv + flat * (2 * G * D));
        uint4* dst = (uint4*)(P.slots + (long long)P.uni_slot[ue] * (2 * G * D));
        for (int v = threadIdx.x; v < VECS; v += NT) dst[v] = src[v];
    }
}

// ---------------------------------------------------------------------------------------------------
// hga_attend: split-K exact attention of HT query heads of one KV head over sinks, opened groups (from
// slots) and local window + current chunk; fp32 online softmax. grid (SK, KVH * HTILES, B), block NT.
// Virtual token order: [0, S) sinks | [S, S + U*G) union groups | local_start*C ..= pos.
struct TokenRef {
    const elem_t* k;
    const elem_t* v;
    int masked_union;  // union entry index (per-head mask applies) or -1
};

__device__ __forceinline__ TokenRef token_ref(const HgaParams& P, int b, int kvh, int t, int S, int U, int local0) {
    TokenRef r;
    if (t >= S && t < S + U * G) {
        const int u = (t - S) / G, j = (t - S) % G;
        const long long bk = (long long)b * KVH + kvh;
        const elem_t* base = P.slots + (long long)P.uni_slot[bk * P.ucap + u] * (2 * G * D) + (long long)j * D;
        r.k = base;
        r.v = base + G * D;
        r.masked_union = u;
    } else {
        const int p = t < S ? t : local0 + (t - S - U * G);
        const long long off = win_base(b, kvh) + win_row(p) * D;
        r.k = P.win_k + off;
        r.v = P.win_v + off;
        r.masked_union = -1;
    }
    return r;
}

#if VW == 8
typedef uint4 vec_t;
#elif VW == 4
typedef uint2 vec_t;
#else
typedef unsigned vec_t;
#endif
constexpr int WORDS_PER_VEC = VW / 2;
constexpr int KROW = D / 2 + 1;  // K tile row in 32-bit words, padded: conflict-free column reads

extern "C" __global__ void __launch_bounds__(NT) hga_attend(HgaParams P) {
    __shared__ float q_s[HT][D];
    __shared__ unsigned k_s[TT][KROW];
    __shared__ __align__(16) unsigned v_s[TT][D / 2];
    __shared__ float p_s[HT][TT];
    __shared__ float alpha_s[HT];
    __shared__ float m_s[HT], l_s[HT];
    __shared__ unsigned char keep_s[HT][TT];
    const int split = blockIdx.x, kvh = blockIdx.y / HTILES, h0 = (blockIdx.y % HTILES) * HT, b = blockIdx.z;
    const int pos = P.pos[b];
    const Windows w = windows_at(pos);
    const long long bk = (long long)b * KVH + kvh;
    const int S = w.sinks_end * C;
    const int U = P.n_uni[bk];
    const int local0 = w.local_start * C;
    const int n_total = S + U * G + (pos + 1 - local0);
    const int tiles = (n_total + TT - 1) / TT;
    const int per = (tiles + SK - 1) / SK;
    const int t_begin = split * per * TT, t_end = min(n_total, (split + 1) * per * TT);

    for (int x = threadIdx.x; x < HT * D; x += NT)
        q_s[x / D][x % D] = ld_elem(P.q[((long long)b * QH + kvh * GQA + h0 + x / D) * D + x % D]);
    if (threadIdx.x < HT) { m_s[threadIdx.x] = NEG_INF; l_s[threadIdx.x] = 0.f; }

    // Output items: (head, dimension pair); ITEMS_PT per thread.
    constexpr int ITEMS = HT * (D / 2);
    constexpr int ITEMS_PT = (ITEMS + NT - 1) / NT;
    float acc[ITEMS_PT][2];
#pragma unroll
    for (int i = 0; i < ITEMS_PT; ++i) { acc[i][0] = 0.f; acc[i][1] = 0.f; }

    constexpr int VPR = D / VW;  // vectors per row
    for (int t0 = t_begin; t0 < t_end; t0 += TT) {
        __syncthreads();
        // Stage the tile's keys and values; rows past the end are zero (their weights are zero, and
        // 0 * garbage could be NaN).
        for (int x = threadIdx.x; x < TT * VPR; x += NT) {
            const int r = x / VPR, c = x % VPR;
            const int t = t0 + r;
            vec_t kv, vv;
            if (t < t_end) {
                const TokenRef ref = token_ref(P, b, kvh, t, S, U, local0);
                kv = ((const vec_t*)ref.k)[c];
                vv = ((const vec_t*)ref.v)[c];
            } else {
                kv = vec_t{};
                vv = vec_t{};
            }
            const unsigned* kw = (const unsigned*)&kv;
#pragma unroll
            for (int j = 0; j < WORDS_PER_VEC; ++j) k_s[r][c * WORDS_PER_VEC + j] = kw[j];
            *(vec_t*)&v_s[r][c * WORDS_PER_VEC] = vv;
        }
        for (int x = threadIdx.x; x < HT * TT; x += NT) {
            const int h = x / TT, r = x % TT, t = t0 + r;
            bool keep = t < t_end;
            if (keep && t >= S && t < S + U * G) {
                const int hh = h0 + h;
                keep = (P.uni_mask[(bk * P.ucap + (t - S) / G) * MW + (hh >> 5)] >> (hh & 31)) & 1u;
            }
            keep_s[h][r] = keep;
        }
        __syncthreads();
        // Scores: item = (head, token), token fastest so a warp reads distinct K rows.
        for (int x = threadIdx.x; x < HT * TT; x += NT) {
            const int h = x / TT, r = x % TT;
            float s = 0.f;
#pragma unroll 8
            for (int j = 0; j < D / 2; ++j) {
                const unsigned kw = k_s[r][j];
                s += q_s[h][2 * j] * lo_elem(kw) + q_s[h][2 * j + 1] * hi_elem(kw);
            }
            p_s[h][r] = keep_s[h][r] ? s * SCALE : NEG_INF;
        }
        __syncthreads();
        // Online softmax per head: one warp per head.
        for (int h = threadIdx.x >> 5; h < HT; h += NT / 32) {
            const int lane = threadIdx.x & 31;
            float mx = NEG_INF;
            for (int r = lane; r < TT; r += 32) mx = fmaxf(mx, p_s[h][r]);
            mx = warp_max(mx);
            const float m_old = m_s[h];
            const float m_new = fmaxf(m_old, mx);
            float sum = 0.f;
            for (int r = lane; r < TT; r += 32) {
                const float p = m_new == NEG_INF ? 0.f : expf(p_s[h][r] - m_new);
                p_s[h][r] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float a = m_old == NEG_INF ? (m_new == NEG_INF ? 1.f : 0.f) : expf(m_old - m_new);
                alpha_s[h] = a;
                l_s[h] = l_s[h] * a + sum;
                m_s[h] = m_new;
            }
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < ITEMS_PT; ++i) {
            const int it = threadIdx.x + i * NT;
            if (ITEMS % NT == 0 || it < ITEMS) {
                const int h = it / (D / 2), dp = it % (D / 2);
                const float a = alpha_s[h];
                float a0 = acc[i][0] * a, a1 = acc[i][1] * a;
                for (int r = 0; r < TT; ++r) {
                    const float p = p_s[h][r];
                    const unsigned vw = v_s[r][dp];
                    a0 += p * lo_elem(vw);
                    a1 += p * hi_elem(vw);
                }
                acc[i][0] = a0;
                acc[i][1] = a1;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < ITEMS_PT; ++i) {
        const int it = threadIdx.x + i * NT;
        if (ITEMS % NT == 0 || it < ITEMS) {
            const int h = it / (D / 2), dp = it % (D / 2);
            const long long row = ((long long)b * QH + kvh * GQA + h0 + h) * SK + split;
            P.part_acc[row * D + 2 * dp] = acc[i][0];
            P.part_acc[row * D + 2 * dp + 1] = acc[i][1];
        }
    }
    if (threadIdx.x < HT) {
        const long long row = ((long long)b * QH + kvh * GQA + h0 + threadIdx.x) * SK + split;
        P.part_ml[row * 2] = m_s[threadIdx.x];
        P.part_ml[row * 2 + 1] = l_s[threadIdx.x];
    }
}

// hga_merge: combines the SK splits of each query head into the output. grid (QH, B), block D.
extern "C" __global__ void __launch_bounds__(D) hga_merge(HgaParams P) {
    const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    const long long row = ((long long)b * QH + h) * SK;
    float m = NEG_INF;
    for (int s = 0; s < SK; ++s) m = fmaxf(m, P.part_ml[(row + s) * 2]);
    float l = 0.f, o = 0.f;
    for (int s = 0; s < SK; ++s) {
        const float ms = P.part_ml[(row + s) * 2];
        const float wgt = ms == NEG_INF ? 0.f : expf(ms - m);
        l += wgt * P.part_ml[(row + s) * 2 + 1];
        o += wgt * P.part_acc[(row + s) * D + d];
    }
    P.out[((long long)b * QH + h) * D + d] = st_elem(o / l);
}
