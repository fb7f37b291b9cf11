/* One optimizer step of R stacked runs in one pass over their parameters (optim/stacked_update.py):

       ∇' = ∇ + λθ,   b ← μb + a∇',   θ ← θ − η(c∇' + e b)

   run r is row r of `theta`, `buffer` and `gradient` (`size` floats each), with coefficients
   (η, μ, a, c, e) at `coefficients` + 5r and λ at `weight_decay` + r. Every operation is rounded as the
   torch path's elementwise operation for it rounds: the two `addcmul_` (∇ + λθ and μb + a∇') with one
   rounding (a fused multiply-add) where FUSED is 1, as torch's CPU kernels do on this machine, with two
   where it is 0; every other product and sum on its own (compiler contraction is off). One thread: the
   pass is memory-bound and small. */
#pragma STDC FP_CONTRACT OFF
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <math.h>

static inline float multiply_add(float x, float y, float z) { /* x·y + z as torch's addcmul rounds it */
#if FUSED
    return fmaf(x, y, z);
#else
    return x * y + z;
#endif
}

void stacked_update(long runs, long size, float *theta, float *buffer, const float *gradient,
                    const float *coefficients, const float *weight_decay) {
    for (long r = 0; r < runs; r++) {
        const float *k = coefficients + 5 * r;
        const float lr = k[0], momentum = k[1], share = k[2], gradient_step = k[3], buffer_step = k[4];
        const float decay = weight_decay[r];
        float *t = theta + r * size, *b = buffer + r * size;
        const float *g = gradient + r * size;
        for (long i = 0; i < size; i++) {
            const float decayed = multiply_add(t[i], decay, g[i]);              /* ∇' = ∇ + λθ */
            const float moved = multiply_add(decayed, share, b[i] * momentum);  /* b ← μb + a∇' */
            const float direction = decayed * gradient_step + moved * buffer_step; /* c∇' + eb */
            b[i] = moved;
            t[i] = t[i] - direction * lr; /* θ ← θ − η(c∇' + eb) */
        }
    }
}
