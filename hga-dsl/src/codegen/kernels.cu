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
                              // [4] id of the last step (this step's: [4] + 1, stamps the slots it uses)
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
    int step;                 // unused: the step id lives in fetch_state[4] (so a captured graph replays)
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

// Places the `cnt` best of the (value, index) pairs sv/si[0..n) into out[rank] by counting, for each
// pair, the pairs ranked before it. Indices are unique, so ranks are too. Every thread must call it.
__device__ void rank_select(const float* sv, const int* si, int n, int cnt, int* out, int out_offset) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = sv[i];
        const int x = si[i];
        int rank = 0;
        for (int j = 0; j < n; ++j) rank += better(sv[j], si[j], v, x);
        if (rank < cnt) out[rank] = x + out_offset;
    }
}

#define RANK_DIRECT 256
#define RANK_MAX 512
#define LIST_MAX 16

// The best `k` of `vals[0..n)` (higher first, then lower index) into out[0..k'), k' = min(k, n), as
// indices + out_offset; KMAX >= k is the compile-time budget. Small n: rank counting in shared memory.
// Larger n with KMAX <= LIST_MAX: each thread keeps its sorted top KMAX in registers, each warp merges
// its lanes' lists, and the warps' lists are ranked. Otherwise KMAX rounds, each picking the best
// element ranked after the previous pick. Every thread of the block must call it.
template <int KMAX>
__device__ int block_topk(const float* vals, int n, int k, int* out, int out_offset) {
    __shared__ float sv[RANK_MAX];
    __shared__ int si[RANK_MAX];
    const int cnt = min(k, n);
    __syncthreads();
    if (n <= RANK_DIRECT) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) { sv[i] = vals[i]; si[i] = i; }
        __syncthreads();
        rank_select(sv, si, n, cnt, out, out_offset);
        return cnt;
    }
    if (KMAX <= LIST_MAX && (SNT / 32) * KMAX <= RANK_MAX) {
        constexpr int K = KMAX <= LIST_MAX ? KMAX : 1;
        float lv[K];
        int li[K];
#pragma unroll
        for (int j = 0; j < K; ++j) { lv[j] = NEG_INF; li[j] = 0x7fffffff; }
        // Loads in batches so that they are in flight together (fewer for long lists: registers).
        constexpr int BATCH = K <= 16 ? 16 : 4;
        for (int i0 = threadIdx.x; i0 < n; i0 += BATCH * SNT) {
            float vb[BATCH];
#pragma unroll
            for (int b = 0; b < BATCH; ++b) vb[b] = i0 + b * SNT < n ? vals[i0 + b * SNT] : NEG_INF;
#pragma unroll
            for (int b = 0; b < BATCH; ++b) {
                float cv = vb[b];
                int ci = i0 + b * SNT;
                if (ci < n && better(cv, ci, lv[K - 1], li[K - 1])) {
#pragma unroll
                    for (int j = 0; j < K; ++j) {
                        if (better(cv, ci, lv[j], li[j])) {
                            const float tv = lv[j]; const int ti = li[j];
                            lv[j] = cv; li[j] = ci; cv = tv; ci = ti;
                        }
                    }
                }
            }
        }
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        for (int r = 0; r < K; ++r) {
            float bv = lv[0];
            int bi = li[0];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
            }
            if (li[0] == bi) {
#pragma unroll
                for (int j = 0; j + 1 < K; ++j) { lv[j] = lv[j + 1]; li[j] = li[j + 1]; }
                lv[K - 1] = NEG_INF;
                li[K - 1] = 0x7fffffff;
            }
            if (lane == 0) { sv[warp * K + r] = bv; si[warp * K + r] = bi; }
        }
        __syncthreads();
        rank_select(sv, si, (SNT / 32) * K, cnt, out, out_offset);
        return cnt;
    }
    float* rv = sv;
    int* ri = si;
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
// hga_summarize: builds the summaries of chunk close_chunk[b] (skipped when < 0) from the window
// buffer: block x = 0 the chunk's, block x = 1 + j its group j's. grid (1 + GPC, KVH, B), block D.
// Tokens are staged SUMT at a time; each dimension sums over tokens in order, as the CPU does.
#define SUMT 32
extern "C" __global__ void __launch_bounds__(D) hga_summarize(HgaParams P, const int* close_chunk) {
    __shared__ float rows[SUMT][D + 1];
    __shared__ float fin[D];
    const int span = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int c = close_chunk[b];
    if (c < 0) return;
    const int d = threadIdx.x;
    const long long seq_head = (long long)b * KVH + kvh;
    const int start = span == 0 ? c * C : c * C + (span - 1) * G;
    const int n = span == 0 ? C : G;
    float* out = span == 0 ? P.chunk_sum + (seq_head * P.cap_chunks + c) * (SV * D)
                           : P.group_sum + (seq_head * P.cap_groups + (long long)c * GPC + span - 1) * (SV * D);
    const elem_t* keys = P.win_k + win_base(b, kvh);
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
            if (x < SVEC && t < m) buf[l] = *(const uint4*)(keys + win_row(start + t0 + t) * D + (x % (D / 8)) * 8);
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
    out[d] = lo;
    out[D + d] = hi;
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
    out[d] = v;
#else
    out[d] = acc;
#endif
}

// ---------------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------------
// hga_chunk_score: scores of the candidate chunks against every query head of a KV head. Eight lanes
// share a chunk (each holds D/8 of its summary as float4s, read coalesced), four chunks per warp.
// grid (ceil(max candidates / CHUNK_TILE), KVH, B), block NT.
extern "C" __global__ void __launch_bounds__(NT) hga_chunk_score(HgaParams P) {
    __shared__ __align__(16) float q_s[GQA_TILE_Q][D];
    const int kvh = blockIdx.y, b = blockIdx.z;
    const Windows w = windows_at(P.pos[b]);
    const int n_cand = w.local_start - w.sinks_end;
    const int i0 = blockIdx.x * CHUNK_TILE;
    if (i0 >= n_cand) return;
    const int i1 = min(n_cand, i0 + CHUNK_TILE);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane & 7, grp = lane >> 3;
    constexpr int F4 = D / 32;  // float4s per lane per summary vector
    const float* table = P.chunk_sum + ((long long)b * KVH + kvh) * P.cap_chunks * (long long)(SV * D);
    for (int h0 = 0; h0 < GQA; h0 += GQA_TILE_Q) {
        __syncthreads();
#pragma unroll
        for (int x = threadIdx.x; x < GQA_TILE_Q * D; x += NT) {
            const int h = h0 + x / D;
            q_s[x / D][x % D] = h < GQA ? ld_elem(P.q[((long long)b * QH + kvh * GQA + h) * D + x % D]) : 0.f;
        }
        __syncthreads();
        for (int base = i0 + warp * 4; base < i1; base += (NT / 32) * 4) {
            const int i = base + grp;
            const bool valid = i < i1;
            float4 sl[F4];
#if SCORE_MINMAX
            float4 sh[F4];
#endif
            const float* srow = table + (long long)(w.sinks_end + (valid ? i : i0)) * (SV * D);
#pragma unroll
            for (int j = 0; j < F4; ++j) {
                sl[j] = *(const float4*)(srow + 32 * j + 4 * sub);
#if SCORE_MINMAX
                sh[j] = *(const float4*)(srow + D + 32 * j + 4 * sub);
#endif
            }
            for (int h = 0; h < GQA_TILE_Q && h0 + h < GQA; ++h) {
                float acc = 0.f;
#pragma unroll
                for (int j = 0; j < F4; ++j) {
                    const float4 q4 = *(const float4*)&q_s[h][32 * j + 4 * sub];
#if SCORE_MINMAX
                    acc += fmaxf(q4.x * sl[j].x, q4.x * sh[j].x) + fmaxf(q4.y * sl[j].y, q4.y * sh[j].y)
                         + fmaxf(q4.z * sl[j].z, q4.z * sh[j].z) + fmaxf(q4.w * sl[j].w, q4.w * sh[j].w);
#else
                    acc += q4.x * sl[j].x + q4.y * sl[j].y + q4.z * sl[j].z + q4.w * sl[j].w;
#endif
                }
                acc += __shfl_xor_sync(0xffffffffu, acc, 4);
                acc += __shfl_xor_sync(0xffffffffu, acc, 2);
                acc += __shfl_xor_sync(0xffffffffu, acc, 1);
                if (sub == 0 && valid)
                    P.chunk_score[((long long)b * QH + kvh * GQA + h0 + h) * P.cap_chunks + i] = acc * SCALE;
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

// hga_chunk_select: top TOP_CHUNKS candidate chunks per routing unit (query head, or KV head when
// shared). grid (UNITS, B), block SNT.
extern "C" __global__ void __launch_bounds__(SNT, 1) hga_chunk_select(HgaParams P) {
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
    const int cnt = block_topk<TOP_CHUNKS>(vals, n_cand, P.kce, P.sel_chunk + ou * P.kce, w.sinks_end);
    if (threadIdx.x == 0) P.n_sel_chunk[ou] = cnt;
}

// hga_group_select: the groups of the selected chunks (ascending), scored, top TOP_GROUPS per unit.
// grid (UNITS, B), block SNT.
extern "C" __global__ void __launch_bounds__(SNT, 1) hga_group_select(HgaParams P) {
    __shared__ float red[32];
    __shared__ __align__(16) float q_s[GQA_TILE_Q][D];
    const int u = blockIdx.x, b = blockIdx.y;
    const long long ou = (long long)b * UNITS + u;
    const int kvh = SHARED ? u : u / GQA;
    const int nsel = P.n_sel_chunk[ou];
    const int* sel = P.sel_chunk + ou * P.kce;
    int* cand = P.group_cand + ou * (long long)(P.kce * GPC);
    // Candidate position of a selected chunk = its rank among the selected chunks (ascending order).
    for (int r = threadIdx.x; r < nsel; r += SNT) {
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
#pragma unroll
        for (int x = threadIdx.x; x < GQA_TILE_Q * D; x += SNT) {
            const int h = h0 + x / D;
            const int qh = SHARED ? u * GQA + h : u;
            q_s[x / D][x % D] = h < UNIT_HEADS ? ld_elem(P.q[((long long)b * QH + qh) * D + x % D]) : 0.f;
        }
        __syncthreads();
        const int sub = lane & 7, grp = lane >> 3;
        constexpr int F4 = D / 32;
        for (int base = warp * 4; base < n; base += (SNT / 32) * 4) {
            const int i = base + grp;
            const bool valid = i < n;
            const float* srow = table + (long long)cand[valid ? i : 0] * (SV * D);
            float4 sl[F4];
#if SCORE_MINMAX
            float4 sh[F4];
#endif
#pragma unroll
            for (int j = 0; j < F4; ++j) {
                sl[j] = *(const float4*)(srow + 32 * j + 4 * sub);
#if SCORE_MINMAX
                sh[j] = *(const float4*)(srow + D + 32 * j + 4 * sub);
#endif
            }
            for (int h = 0; h < GQA_TILE_Q && h0 + h < UNIT_HEADS; ++h) {
                float acc = 0.f;
#pragma unroll
                for (int j = 0; j < F4; ++j) {
                    const float4 q4 = *(const float4*)&q_s[h][32 * j + 4 * sub];
#if SCORE_MINMAX
                    acc += fmaxf(q4.x * sl[j].x, q4.x * sh[j].x) + fmaxf(q4.y * sl[j].y, q4.y * sh[j].y)
                         + fmaxf(q4.z * sl[j].z, q4.z * sh[j].z) + fmaxf(q4.w * sl[j].w, q4.w * sh[j].w);
#else
                    acc += q4.x * sl[j].x + q4.y * sl[j].y + q4.z * sl[j].z + q4.w * sl[j].w;
#endif
                }
                acc += __shfl_xor_sync(0xffffffffu, acc, 4);
                acc += __shfl_xor_sync(0xffffffffu, acc, 2);
                acc += __shfl_xor_sync(0xffffffffu, acc, 1);
                const int qh = SHARED ? u * GQA + h0 + h : u;
                if (sub == 0 && valid) P.group_score[((long long)b * QH + qh) * kg + i] = acc * SCALE;
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
    const int cnt = block_topk<TOP_GROUPS>(vals, n, P.kge, out, 0);
    __syncthreads();
    // block_topk wrote candidate positions; turn them into global group indices.
    for (int r = threadIdx.x; r < cnt; r += SNT) out[r] = cand[out[r]];
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
#define RESOLVE_SMEM 2048
// Records union entry `idx` (group g, query-head mask) and resolves it against the slot cache.
__device__ __forceinline__ void resolve_entry(const HgaParams& P, long long bk, int idx, int g, const unsigned* mask) {
    const long long ue = bk * P.ucap + idx;
    P.uni_group[ue] = g;
#pragma unroll
    for (int m = 0; m < MW; ++m) P.uni_mask[ue * MW + m] = mask[m];
    const int s = P.slot_of[bk * P.cap_groups + g];
    P.uni_slot[ue] = s;
    if (s >= 0) {
        P.slot_stamp[s] = P.fetch_state[4] + 1;
    } else {
        const int m = atomicAdd(&P.fetch_state[0], 1);
        P.miss_list[m] = (int)ue;
    }
}

extern "C" __global__ void __launch_bounds__(NT) hga_fetch_resolve(HgaParams P) {
    __shared__ unsigned long long keys[RESOLVE_SMEM];
    const int kvh = blockIdx.x, b = blockIdx.y;
    const long long bk = (long long)b * KVH + kvh;
    const int kge = P.kge;
    const int n_units = SHARED ? 1 : GQA;
    const int u0 = SHARED ? kvh : kvh * GQA;
    const int E = n_units * kge;
    const int* sel = P.sel_group + ((long long)b * UNITS + u0) * kge;
    const int* cnt = P.n_sel_group + (long long)b * UNITS + u0;
    // Entry e = (unit e / kge, rank e % kge): its group, or -1 past the unit's count.
    auto entry = [&](int e) -> int { return (e % kge) < cnt[e / kge] ? sel[e] : -1; };
    int base = 0;
    if (E <= RESOLVE_SMEM) {
        // Sort (group, entry) pairs; the union is then ascending by group, the first of each run kept.
        int N = 1;
        while (N < E) N <<= 1;
        for (int i = threadIdx.x; i < N; i += NT) {
            const int g = i < E ? entry(i) : -1;
            keys[i] = g >= 0 ? ((unsigned long long)g << 32) | (unsigned)i : ~0ull;
        }
        __syncthreads();
        for (int k = 2; k <= N; k <<= 1) {
            for (int j = k >> 1; j > 0; j >>= 1) {
                for (int i = threadIdx.x; i < N; i += NT) {
                    const int ixj = i ^ j;
                    if (ixj > i) {
                        const unsigned long long x = keys[i], y = keys[ixj];
                        if ((x > y) == ((i & k) == 0)) { keys[i] = y; keys[ixj] = x; }
                    }
                }
                __syncthreads();
            }
        }
        for (int i0 = 0; i0 < N; i0 += NT) {
            const int i = i0 + threadIdx.x;
            const unsigned long long key = i < N ? keys[i] : ~0ull;
            const int g = (int)(key >> 32);
            const bool first = key != ~0ull && (i == 0 || (int)(keys[i - 1] >> 32) != g);
            int total;
            const int idx = base + block_prefix_count(first, &total);
            base += total;
            if (!first) continue;
            unsigned mask[MW];
#pragma unroll
            for (int m = 0; m < MW; ++m) mask[m] = SHARED ? 0xffffffffu : 0u;
            if (!SHARED) {
                for (int j = i; j < N && keys[j] != ~0ull && (int)(keys[j] >> 32) == g; ++j) {
                    const int h2 = (int)(keys[j] & 0xffffffffu) / kge;
                    mask[h2 >> 5] |= 1u << (h2 & 31);
                }
            }
            resolve_entry(P, bk, idx, g, mask);
        }
    } else {
        // Large budgets: rounds of NT entries, each kept where its group first occurs (entry order).
        for (int e0 = 0; e0 < E; e0 += NT) {
            const int e = e0 + threadIdx.x;
            const int g = e < E ? entry(e) : -1;
            bool first = g >= 0;
            for (int e2 = 0; e2 < e && first; ++e2)
                if (entry(e2) == g) first = false;
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
                    if (entry(e2) == g) mask[h2 >> 5] |= 1u << (h2 & 31);
                }
            }
            resolve_entry(P, bk, idx, g, mask);
        }
    }
    if (threadIdx.x == 0) P.n_uni[bk] = base;
}

// hga_fetch_assign: gives each miss a slot not used by this step, clock order from the hand; the
// slot's previous owner loses it. grid (1), block NT.
extern "C" __global__ void __launch_bounds__(NT) hga_fetch_assign(HgaParams P) {
    __shared__ int new_hand;
    const int step = P.fetch_state[4] + 1;
    const int n = P.fetch_state[0];
    const int hand = P.fetch_state[2];
    if (threadIdx.x == 0) new_hand = hand;
    int assigned = 0;
    for (int scanned = 0; assigned < n && scanned < P.n_slots; scanned += NT) {
        const int off = scanned + threadIdx.x;
        const int s = (hand + off) % P.n_slots;
        const bool ok = off < P.n_slots && P.slot_stamp[s] != step;
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
            P.slot_stamp[s] = step;
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
        P.fetch_state[4] = step;
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

#pragma unroll
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
    constexpr int LOADS = (TT * VPR + NT - 1) / NT;
    // The next tile's keys and values, loaded into registers while the current tile is computed.
    vec_t kr[LOADS], vr[LOADS];
    constexpr int KEEP_PT = (HT * TT + NT - 1) / NT;
    bool keep_r[KEEP_PT];
    auto load_tile = [&](int t0) {
#pragma unroll
        for (int i = 0; i < KEEP_PT; ++i) {
            const int x = threadIdx.x + i * NT;
            const int h = x / TT, t = t0 + x % TT;
            bool keep = x < HT * TT && t < t_end;
            if (keep && t >= S && t < S + U * G) {
                const int hh = h0 + h;
                keep = (P.uni_mask[(bk * P.ucap + (t - S) / G) * MW + (hh >> 5)] >> (hh & 31)) & 1u;
            }
            keep_r[i] = keep;
        }
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            const int x = threadIdx.x + l * NT;
            const int r = x / VPR, c = x % VPR;
            const int t = t0 + r;
            if ((TT * VPR) % NT == 0 || x < TT * VPR) {
                if (t < t_end) {
                    const TokenRef ref = token_ref(P, b, kvh, t, S, U, local0);
                    kr[l] = ((const vec_t*)ref.k)[c];
                    vr[l] = ((const vec_t*)ref.v)[c];
                } else {
                    // Rows past the end are zero: their weights are zero, and 0 * garbage could be NaN.
                    kr[l] = vec_t{};
                    vr[l] = vec_t{};
                }
            }
        }
    };
    if (t_begin < t_end) load_tile(t_begin);
    for (int t0 = t_begin; t0 < t_end; t0 += TT) {
        __syncthreads();
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            const int x = threadIdx.x + l * NT;
            if ((TT * VPR) % NT == 0 || x < TT * VPR) {
                const int r = x / VPR, c = x % VPR;
                const unsigned* kw = (const unsigned*)&kr[l];
#pragma unroll
                for (int j = 0; j < WORDS_PER_VEC; ++j) k_s[r][c * WORDS_PER_VEC + j] = kw[j];
                *(vec_t*)&v_s[r][c * WORDS_PER_VEC] = vr[l];
            }
        }
#pragma unroll
        for (int i = 0; i < KEEP_PT; ++i) {
            const int x = threadIdx.x + i * NT;
            if (x < HT * TT) keep_s[x / TT][x % TT] = keep_r[i];
        }
        __syncthreads();
        if (t0 + TT < t_end) load_tile(t0 + TT);
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
#pragma unroll
    for (int s = 0; s < SK; ++s) m = fmaxf(m, P.part_ml[(row + s) * 2]);
    float l = 0.f, o = 0.f;
#pragma unroll 8
    for (int s = 0; s < SK; ++s) {
        const float ms = P.part_ml[(row + s) * 2];
        const float wgt = ms == NEG_INF ? 0.f : expf(ms - m);
        l += wgt * P.part_ml[(row + s) * 2 + 1];
        o += wgt * P.part_acc[(row + s) * D + d];
    }
    P.out[((long long)b * QH + h) * D + d] = st_elem(o / l);
}
