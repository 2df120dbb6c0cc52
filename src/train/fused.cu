// Fused single-pass kernels for nets on a CUDA GPU (compiled to PTX by build.rs
// when the `cuda` feature is on; wrapped as candle custom ops in fused.rs).
//
// Each kernel is the CPU kernel of the same name in kernels.rs / sgd.rs,
// one thread per output element, reading its inputs once. They sum in the
// same order as the CPU twins and build.rs compiles them without FMA
// contraction, so twins agree to the last bits except for powf.
//
// Every kernel takes its element count first and loops grid-stride, so any
// launch size covers any tensor.

#define GRID_LOOP(i, n)                                                   \
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += blockDim.x * gridDim.x)

// Caffe's ReLU gradient: dy where x > 0, slope * dy elsewhere.
extern "C" __global__ void fs_relu_backward(unsigned int n, float slope, const float* x,
                                            const float* dy, float* dx) {
    GRID_LOOP(i, n) { dx[i] = x[i] > 0.0f ? dy[i] : slope * dy[i]; }
}

// Max pooling of (N, C, H, W) into y (N, C, OH, OW); mask gets each output's
// first maximum as a float index within its input plane (exact below 2^24).
// Windows are clipped to the image; a window of only -inf or NaN keeps its
// first position, as the CPU kernel does.
extern "C" __global__ void fs_max_pool_forward(unsigned int n, int height, int width, int oh,
                                               int ow, int kh, int kw, int sh, int sw, int ph,
                                               int pw, const float* x, float* y, float* mask) {
    GRID_LOOP(i, n) {
        const int ox = i % ow;
        const int oy = (i / ow) % oh;
        const unsigned int plane = i / (ow * oh);
        int y0 = oy * sh - ph;
        int x0 = ox * sw - pw;
        const int y1 = min(y0 + kh, height);
        const int x1 = min(x0 + kw, width);
        y0 = max(y0, 0);
        x0 = max(x0, 0);
        const float* xp = x + (size_t)plane * height * width;
        float best = 0.0f;
        int best_i = -1;
        for (int iy = y0; iy < y1; ++iy) {
            for (int ix = x0; ix < x1; ++ix) {
                const int j = iy * width + ix;
                // Strictly greater: the first maximum wins, like Caffe.
                if (best_i < 0 || xp[j] > best) {
                    best = xp[j];
                    best_i = j;
                }
            }
        }
        y[i] = best;
        mask[i] = (float)best_i;
    }
}

// Gradient of fs_max_pool_forward as a gather: each input pixel sums dy over
// the windows that cover it and chose it, in output order (the CPU twin's
// scatter order), so there are no atomics and no races.
extern "C" __global__ void fs_max_pool_backward(unsigned int n, int height, int width, int oh,
                                                int ow, int kh, int kw, int sh, int sw, int ph,
                                                int pw, const float* dy, const float* mask,
                                                float* dx) {
    GRID_LOOP(i, n) {
        const int ix = i % width;
        const int iy = (i / width) % height;
        const unsigned int plane = i / (width * height);
        const int py0 = (iy + ph < kh) ? 0 : (iy + ph - kh) / sh + 1;
        const int py1 = min((iy + ph) / sh + 1, oh);
        const int px0 = (ix + pw < kw) ? 0 : (ix + pw - kw) / sw + 1;
        const int px1 = min((ix + pw) / sw + 1, ow);
        const float me = (float)(iy * width + ix);
        const size_t off = (size_t)plane * oh * ow;
        float g = 0.0f;
        for (int py = py0; py < py1; ++py) {
            for (int px = px0; px < px1; ++px) {
                const size_t o = off + py * ow + px;
                if (mask[o] == me) {
                    g += dy[o];
                }
            }
        }
        dx[i] = g;
    }
}

// Cross-channel LRN of (N, C, plane): one thread per (image, position) walks
// the channels with a running window sum of squares (add the channel
// entering, subtract the one leaving, as Caffe and the CPU twin do).
// Writes y and the scale k + alpha/size * sum, which the backward pass needs.
extern "C" __global__ void fs_lrn_forward(unsigned int n, int channels, int plane, int size,
                                          float alpha_over_size, float beta, float k,
                                          const float* x, float* y, float* scale) {
    GRID_LOOP(i, n) {
        const size_t base = (size_t)(i / plane) * channels * plane + i % plane;
        const float* xs = x + base;
        const int pre = (size - 1) / 2;
        float acc = 0.0f;
        for (int c = 0; c < min(pre, channels); ++c) {
            const float v = xs[(size_t)c * plane];
            acc += v * v;
        }
        for (int c = 0; c < channels; ++c) {
            if (c + pre < channels) {
                const float v = xs[(size_t)(c + pre) * plane];
                acc += v * v;
            }
            if (c > pre) {
                const float v = xs[(size_t)(c - pre - 1) * plane];
                acc -= v * v;
            }
            const float s = k + alpha_over_size * acc;
            const size_t at = base + (size_t)c * plane;
            scale[at] = s;
            y[at] = x[at] * powf(s, -beta);
        }
    }
}

// Caffe's LRN gradient: dy * scale^-beta - coeff * x * (window sum of
// dy * y / scale), coeff = 2 * alpha * beta / size.
extern "C" __global__ void fs_lrn_backward(unsigned int n, int channels, int plane, int size,
                                           float beta, float coeff, const float* x,
                                           const float* y, const float* scale, const float* dy,
                                           float* dx) {
    GRID_LOOP(i, n) {
        const size_t base = (size_t)(i / plane) * channels * plane + i % plane;
        const int pre = (size - 1) / 2;
#define RATIO(c) (dy[base + (size_t)(c) * plane] * y[base + (size_t)(c) * plane] / \
                  scale[base + (size_t)(c) * plane])
        float acc = 0.0f;
        for (int c = 0; c < min(pre, channels); ++c) {
            acc += RATIO(c);
        }
        for (int c = 0; c < channels; ++c) {
            if (c + pre < channels) {
                acc += RATIO(c + pre);
            }
            if (c > pre) {
                acc -= RATIO(c - pre - 1);
            }
            const size_t at = base + (size_t)c * plane;
            dx[at] = dy[at] * powf(scale[at], -beta) - coeff * x[at] * acc;
        }
#undef RATIO
    }
}

// Folds a column-matrix gradient (N, C*kh*kw, OH*OW) back onto the input
// (N, C, H, W): each input pixel gathers the column entries it fed (Caffe's
// col2im, with dilation), so no two threads write the same element.
extern "C" __global__ void fs_col2im(unsigned int n, int channels, int height, int width, int kh,
                                     int kw, int ph, int pw, int sh, int sw, int dh, int dw,
                                     int oh, int ow, const float* cols, float* dx) {
    GRID_LOOP(i, n) {
        const int x = i % width + pw;
        const int y = (i / width) % height + ph;
        const int c = (i / width / height) % channels;
        const unsigned int img = i / (width * height * channels);
        const int ext_w = (kw - 1) * dw + 1;
        const int ext_h = (kh - 1) * dh + 1;
        const int cx0 = (x < ext_w) ? 0 : (x - ext_w) / sw + 1;
        const int cx1 = min(x / sw + 1, ow);
        const int cy0 = (y < ext_h) ? 0 : (y - ext_h) / sh + 1;
        const int cy1 = min(y / sh + 1, oh);
        const float* col = cols + (size_t)img * channels * kh * kw * oh * ow;
        float v = 0.0f;
        for (int cy = cy0; cy < cy1; ++cy) {
            for (int cx = cx0; cx < cx1; ++cx) {
                int ky = y - cy * sh;
                int kx = x - cx * sw;
                if (ky % dh == 0 && kx % dw == 0) {
                    ky /= dh;
                    kx /= dw;
                    const size_t row = ((size_t)c * kh + ky) * kw + kx;
                    v += col[(row * oh + cy) * ow + cx];
                }
            }
        }
        dx[i] = v;
    }
}

// Caffe's SGD history update in Caffe's order: scale the gradient by s1 then
// s2 (each only when its flag is set: clipping, 1/iter_size), add weight
// decay (L2: w, L1: sign(w)), then h = rate * d + momentum * h.
extern "C" __global__ void fs_sgd_history(unsigned int n, float s1, int use_s1, float s2,
                                          int use_s2, float decay, int l1, float rate,
                                          float momentum, const float* w, const float* g,
                                          const float* h_in, float* h_out) {
    GRID_LOOP(i, n) {
        float d = g[i];
        if (use_s1) d *= s1;
        if (use_s2) d *= s2;
        if (decay != 0.0f) {
            const float wi = w[i];
            const float r = l1 ? (float)((0.0f < wi) - (wi < 0.0f)) : wi;
            d += decay * r;
        }
        h_out[i] = rate * d + momentum * h_in[i];
    }
}

// One ChaCha quarter round.
#define FS_ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
#define FS_QR(a, b, c, d)                    \
    a += b; d ^= a; d = FS_ROTL(d, 16);      \
    c += d; b ^= c; b = FS_ROTL(b, 12);      \
    a += b; d ^= a; d = FS_ROTL(d, 8);       \
    c += d; b ^= c; b = FS_ROTL(b, 7);

// Inverted-dropout mask (scale where kept, 0 where dropped) drawn from the
// ChaCha8 keystream that rand_chacha's ChaCha8Rng produces for `key` (its
// seed) and `stream`: element e uses word e, as u = (word >> 8) * 2^-24,
// kept when u >= ratio, exactly as the CPU path draws it one value at a
// time. So a GPU run drops the same units as a CPU run. One thread per
// 16-word block: the block counter is the block index, the nonce the stream.
extern "C" __global__ void fs_dropout_mask(unsigned int n, unsigned int k0, unsigned int k1,
                                           unsigned int k2, unsigned int k3, unsigned int k4,
                                           unsigned int k5, unsigned int k6, unsigned int k7,
                                           unsigned int stream_lo, unsigned int stream_hi,
                                           float ratio, float scale, float* mask) {
    const unsigned int blocks = (n + 15) / 16;
    GRID_LOOP(blk, blocks) {
        const unsigned int in[16] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u,
                                     k0, k1, k2, k3, k4, k5, k6, k7,
                                     blk, 0u, stream_lo, stream_hi};
        unsigned int x[16];
        for (int j = 0; j < 16; ++j) x[j] = in[j];
        for (int r = 0; r < 4; ++r) {
            FS_QR(x[0], x[4], x[8], x[12]);
            FS_QR(x[1], x[5], x[9], x[13]);
            FS_QR(x[2], x[6], x[10], x[14]);
            FS_QR(x[3], x[7], x[11], x[15]);
            FS_QR(x[0], x[5], x[10], x[15]);
            FS_QR(x[1], x[6], x[11], x[12]);
            FS_QR(x[2], x[7], x[8], x[13]);
            FS_QR(x[3], x[4], x[9], x[14]);
        }
        for (int j = 0; j < 16; ++j) {
            const unsigned int e = blk * 16 + j;
            if (e < n) {
                const float u = (float)((x[j] + in[j]) >> 8) * (1.0f / 16777216.0f);
                mask[e] = u >= ratio ? scale : 0.0f;
            }
        }
    }
}
