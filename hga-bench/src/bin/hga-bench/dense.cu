// Dense flash-decoding for hga-bench's own dense baseline: all K/V in HBM, bf16, one query token per
// sequence. Layouts: q [B][QH][D], k and v [B][KVH][N][D], out [B][QH][D] (bf16 bits);
// part_ml [B][QH][S][2] (running max in log2 units, sum), part_acc [B][QH][S][D] (unnormalized).
// D = 128 (16 lanes × 8 dims: one 16-byte load per lane per token), GQA query heads per KV head.
// Self-contained: no toolkit headers.
#ifndef GQA
#define GQA 8
#endif
#define D 128
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ float bf_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ u16 to_bf(float f) {
    u32 b = __float_as_uint(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x40);
    b += 0x7fffu + ((b >> 16) & 1u);
    return (u16)(b >> 16);
}

// Split s of (b, kvh): tokens [s*per, min(N, (s+1)*per)). grid (S, KVH, B), block 128: 8 half-warps,
// each one token at a time, its 16 lanes 8 dims each; per-half-warp online softmax, combined at the end.
extern "C" __global__ void __launch_bounds__(128) dense_partial(const u16* __restrict__ q, const u16* __restrict__ k,
        const u16* __restrict__ v, int N, int KVH, int S, float scale_log2, float* part_ml, float* part_acc) {
    __shared__ float sm_acc[8][GQA][D];
    __shared__ float sm_m[8][GQA], sm_l[8][GQA];
    const int s = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, half = lane >> 4, l16 = lane & 15;
    const int hw = warp * 2 + half;
    const int QH = KVH * GQA;
    float qr[GQA][8];
#pragma unroll
    for (int h = 0; h < GQA; ++h) {
        const uint4 w = *(const uint4*)(q + ((long long)b * QH + kvh * GQA + h) * D + l16 * 8);
        const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            qr[h][2 * j] = bf_lo(ws[j]) * scale_log2;
            qr[h][2 * j + 1] = bf_hi(ws[j]) * scale_log2;
        }
    }
    float m[GQA], l[GQA], acc[GQA][8];
#pragma unroll
    for (int h = 0; h < GQA; ++h) {
        m[h] = __int_as_float(0xff800000);
        l[h] = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[h][j] = 0.f;
    }
    const int per = (N + S - 1) / S;
    const int t0 = s * per, t1 = min(N, t0 + per);
    const long long row0 = ((long long)b * KVH + kvh) * N;
    // Two tokens per half-warp per iteration, loads first: 16 tokens of the block in flight.
    for (int base = t0 + warp * 4; base < t1; base += 16) {
        int tt[2] = {base + half, base + 2 + half};
        uint4 kw[2], vw[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            const bool ok = tt[u] < t1;
            const long long off = (row0 + (ok ? tt[u] : t0)) * D + l16 * 8;
            kw[u] = *(const uint4*)(k + off);
            vw[u] = *(const uint4*)(v + off);
        }
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            const u32 ks[4] = {kw[u].x, kw[u].y, kw[u].z, kw[u].w};
            const u32 vs[4] = {vw[u].x, vw[u].y, vw[u].z, vw[u].w};
            float kf[8], vf[8];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                kf[2 * j] = bf_lo(ks[j]); kf[2 * j + 1] = bf_hi(ks[j]);
                vf[2 * j] = bf_lo(vs[j]); vf[2 * j + 1] = bf_hi(vs[j]);
            }
            float sc[GQA];
#pragma unroll
            for (int h = 0; h < GQA; ++h) {
                float a = 0.f;
#pragma unroll
                for (int j = 0; j < 8; ++j) a = fmaf(qr[h][j], kf[j], a);
                sc[h] = a;
            }
            // Sum over the 16 lanes of this half-warp (xor offsets < 16 stay inside it).
#pragma unroll
            for (int o = 8; o >= 1; o >>= 1) {
#pragma unroll
                for (int h = 0; h < GQA; ++h) sc[h] += __shfl_xor_sync(0xffffffffu, sc[h], o);
            }
            if (tt[u] < t1) {
#pragma unroll
                for (int h = 0; h < GQA; ++h) {
                    const float mn = fmaxf(m[h], sc[h]);
                    const float corr = exp2f(m[h] - mn), p = exp2f(sc[h] - mn);
                    l[h] = l[h] * corr + p;
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[h][j] = fmaf(p, vf[j], acc[h][j] * corr);
                    m[h] = mn;
                }
            }
        }
    }
#pragma unroll
    for (int h = 0; h < GQA; ++h) {
#pragma unroll
        for (int j = 0; j < 8; ++j) sm_acc[hw][h][l16 * 8 + j] = acc[h][j];
        if (l16 == 0) { sm_m[hw][h] = m[h]; sm_l[hw][h] = l[h]; }
    }
    __syncthreads();
    // Combine the 8 half-warps: thread t owns dim t of every head.
    const int d = threadIdx.x;
    for (int h = 0; h < GQA; ++h) {
        float M = __int_as_float(0xff800000);
        for (int i = 0; i < 8; ++i) M = fmaxf(M, sm_m[i][h]);
        float L = 0.f, A = 0.f;
        if (M != __int_as_float(0xff800000)) {
            for (int i = 0; i < 8; ++i) {
                const float w = exp2f(sm_m[i][h] - M);
                L += sm_l[i][h] * w;
                A += sm_acc[i][h][d] * w;
            }
        }
        const long long ps = ((long long)b * QH + kvh * GQA + h) * S + s;
        part_acc[ps * D + d] = A;
        if (d == 0) { part_ml[ps * 2] = M; part_ml[ps * 2 + 1] = L; }
    }
}

// Merges the S splits of each query head. grid (QH, B), block D.
extern "C" __global__ void __launch_bounds__(D) dense_merge(const float* part_ml, const float* part_acc, int QH, int S,
        u16* out) {
    const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    const long long p0 = ((long long)b * QH + h) * S;
    float M = __int_as_float(0xff800000);
    for (int i = 0; i < S; ++i) M = fmaxf(M, part_ml[(p0 + i) * 2]);
    float L = 0.f, A = 0.f;
    for (int i = 0; i < S; ++i) {
        const float mi = part_ml[(p0 + i) * 2];
        if (mi == __int_as_float(0xff800000)) continue;
        const float w = exp2f(mi - M);
        L += part_ml[(p0 + i) * 2 + 1] * w;
        A += part_acc[(p0 + i) * D + d] * w;
    }
    out[((long long)b * QH + h) * D + d] = to_bf(A / L);
}

// Fills n bf16 elements with non-zero hashed values, magnitudes in [0.25, 1), both signs.
extern "C" __global__ void fill_bf16(u16* x, u64 n, u64 seed) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u64 z = (i + seed) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        const u16 r = (u16)z;
        x[i] = (u16)((r & 0x807f) | ((r & 0x4000) ? 0x3f00 : 0x3e80));
    }
}
