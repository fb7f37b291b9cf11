/* The ReLU's derivative applied to a CNN student's back-propagated error, one pass over the feature map
   (models/masked_error.py), where torch takes a pass for the mask M = sign(h) and one for each product:

       top_error:   δ_D = (M_D ⊙ a) ⊙ g     δ(q, i, p) = (sign h(q, i, p) · a(q, p)) · g(r, i)
       mask_error:  δ ← δ ⊙ M               δ(q, x) = δ(q, x) · sign h(q, x)

   over `rows` rows q = r·channels + c (run r, channel c) of `n` examples × `span` positions; a row of h
   and of δ starts `*_stride` floats after the previous one. sign is torch's (0 for ±0 and NaN), and each
   product is rounded on its own in torch's order, so the results are the torch path's bit for bit. The
   rows are split among `threads` OpenMP threads (torch's own, see cubic_objective.c) when `openmp` is 1
   and the kernel has OpenMP, else run on the calling thread. */
#pragma STDC FP_CONTRACT OFF
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

static inline float sign(float x) { return (float)(x > 0.0f) - (float)(x < 0.0f); }

void top_error(long rows, long channels, long n, long span, const float *h, long h_stride,
               const float *readout, const float *g, float *error, long error_stride, long threads, int openmp)
{
#pragma omp parallel for num_threads(threads) if (openmp && threads > 1) schedule(static)
    for (long q = 0; q < rows; q++) {
        const float *hq = h + q * h_stride, *a = readout + q * span, *gr = g + (q / channels) * n;
        float *out = error + q * error_stride;
        for (long i = 0; i < n; i++)
            for (long p = 0; p < span; p++)
                out[i * span + p] = (sign(hq[i * span + p]) * a[p]) * gr[i]; /* (M_D ⊙ a) ⊙ g */
    }
}

void mask_error(long rows, long length, float *error, long error_stride, const float *h, long h_stride,
                long threads, int openmp)
{
#pragma omp parallel for num_threads(threads) if (openmp && threads > 1) schedule(static)
    for (long q = 0; q < rows; q++) {
        float *out = error + q * error_stride;
        const float *hq = h + q * h_stride;
        for (long x = 0; x < length; x++) out[x] = out[x] * sign(hq[x]); /* δ ⊙ M */
    }
}
