// hga_gather_misses: copies the groups the last resolve listed as misses with a slot (uni_slot =
// -(slot + 1)) from their host records into their slots, without attending them: the fetch of a
// speculative prefetch. Layouts as in the decode kernels' HgaParams (DESIGN.md §3): a host record and
// a slot both hold one group's keys then values, rec_elems = 2 * group * head_dim elements, contiguous.
// Warps stride over the union entries; grid (x, kv_heads, rows) with any x (the runtime keeps it small:
// the reads are bound by PCIe), rows with pos < 0 sit out.

#define NO_SLOT (-2147483647 - 1)

extern "C" __global__ void __launch_bounds__(256)
hga_gather_misses(const int* __restrict__ pos, const int* __restrict__ uni_group, const int* __restrict__ uni_slot,
                  const int* __restrict__ n_uni, const unsigned long long* __restrict__ group_addr,
                  unsigned short* __restrict__ slots, int kv_heads, int ucap, int part_slots, int cap_groups,
                  int rec_elems) {
    const int b = blockIdx.z, kvh = blockIdx.y;
    if (pos[b] < 0) return;
    const long long bk = (long long)b * kv_heads + kvh;
    const int n = n_uni[bk];
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int u = blockIdx.x * warps + warp; u < n; u += gridDim.x * warps) {
        const int us = uni_slot[bk * ucap + u];
        if (us >= 0 || us == NO_SLOT) continue;
        const unsigned long long src = group_addr[bk * cap_groups + uni_group[bk * ucap + u]];
        if (src == 0) continue;
        unsigned short* dst = slots + (bk * part_slots + (-us - 1)) * (long long)rec_elems;
        if (((src | (unsigned long long)dst) & 15) == 0 && rec_elems % 8 == 0) {
            // 16-byte words, eight loads in flight per lane before their stores (PCIe latency).
            const uint4* s4 = (const uint4*)src;
            uint4* d4 = (uint4*)dst;
            const int n4 = rec_elems / 8;
            for (int i0 = 0; i0 < n4; i0 += 32 * 8) {
                uint4 w[8];
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const int i = i0 + k * 32 + lane;
                    if (i < n4) w[k] = s4[i];
                }
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const int i = i0 + k * 32 + lane;
                    if (i < n4) d4[i] = w[k];
                }
            }
        } else {
            const unsigned short* s = (const unsigned short*)src;
            for (int i = lane; i < rec_elems; i += 32) dst[i] = s[i];
        }
    }
}
