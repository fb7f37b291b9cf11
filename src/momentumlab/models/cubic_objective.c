/* Full-batch loss terms and gradient of the cubic CNN in one pass over the data (SPEC §1):

       f_i = Σ_r Σ_j ⟨w_r, X_i[j]⟩³,   ∇_{w_r} = Σ_i c_i Σ_j ⟨w_r, X_i[j]⟩² X_i[j],   c_i = −3 y_i σ(−y_i f_i) / N.

   WIDTH (m), DIM (d), PATCHES (P) and EXAMPLES (per tile, a multiple of every LANES) are compile-time
   constants (-D), so the loops over them unroll and the accumulators stay in registers. The examples are
   stored in tiles of EXAMPLES examples, each tile BLOCKS blocks of (DIM, LANES) floats: column
   t = p·EXAMPLES + e of a tile (patch p of its example e) is lane t % LANES of block t / LANES. Per tile,
   the forward products ⟨w_r, X[j]⟩ of two blocks are 2·LANES columns at once (2·WIDTH accumulators: with
   WIDTH alone the adds' latency, not the FMA units, set the pace; each block read once, in order, while the
   same lines of the next tile are prefetched, so that its read from memory overlaps this tile's
   arithmetic), then f and c of the tile's examples (expf one by one, the divisions in vectors), then the
   gradient products while the tile is in cache; the gradient's partial sums stay in LANES lanes until the
   end. Several weights (runs on the same data) are passed over each tile in turn while it is in cache, so
   the data is read from memory once for all of them; each run's arithmetic is the same as alone, in the
   same order. Examples past n (padding of the last tile) are zero and get c = 0. With several threads each
   takes a contiguous range of tiles and its own gradient sums; the sums are added in thread order, so a
   given thread count gives the same bits.
   Built with -fopenmp, the threads are those of the OpenMP runtime torch has loaded (libgomp.so.1 is
   resolved to the copy already in the process), so the kernel runs on torch's warm workers instead of
   competing with them while they spin after torch's last parallel op. The caller asks for pthreads
   instead in a process forked after those workers started: the fork did not copy them, and libgomp
   would wait for them forever. */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#ifdef _OPENMP
#define OPENMP 1
#else
#define OPENMP 0
#endif

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
#define COLUMNS (EXAMPLES * PATCHES)
#define BLOCKS (COLUMNS / LANES)
#define TILES_PER_THREAD 64 /* fewer tiles than this per thread: not worth a thread's start */

typedef float vec __attribute__((vector_size(4 * LANES)));
typedef float data_vec __attribute__((vector_size(4 * LANES), aligned(4)));

int lanes(void) { return LANES; }

int openmp(void) { return OPENMP; } /* whether it was built with OpenMP */

/* One tile's examples [first, first + EXAMPLES) ∩ [0, n) for one run: f into outputs, the gradient's
   lanes added to sums. */
static void tile_pass(const data_vec *restrict x, const float *restrict labels, const float *restrict weight,
                      long first, long n, float *restrict outputs, vec (*restrict sums)[DIM])
{
    vec z[WIDTH][BLOCKS]; /* ⟨w_r, X[j]⟩ of the tile's columns, then c·⟨w_r, X[j]⟩² */
    float f[EXAMPLES], coefficients[EXAMPLES];
    const float scale = -3.0f / (float)n;
    for (long block = 0; block < BLOCKS; block += 2) { /* two blocks at once: 2·WIDTH independent sums */
        const data_vec *restrict columns = x + block * DIM;
        const char *next = (const char *)(columns + BLOCKS * DIM); /* the same columns of the next tile */
        const int pair = block + 1 < BLOCKS;
        const long stride = (1 + pair) * (long)sizeof(vec); /* bytes of those columns per k */
        vec products[2][WIDTH];
        for (long r = 0; r < WIDTH; r++) products[0][r] = products[1][r] = (vec){0};
        for (long k = 0; k < DIM; k++) {
            for (long offset = 0; offset < stride; offset += 64) /* their lines, one per 64 bytes */
                __builtin_prefetch(next + stride * k + offset);
            vec column0 = columns[k], column1 = pair ? columns[DIM + k] : (vec){0};
#pragma GCC unroll 16
            for (long r = 0; r < WIDTH; r++) {
                float w = weight[r * DIM + k];
                products[0][r] += w * column0; /* ⟨w_r, X[j]⟩ */
                products[1][r] += w * column1;
            }
        }
        for (long r = 0; r < WIDTH; r++) {
            z[r][block] = products[0][r];
            if (pair) z[r][block + 1] = products[1][r];
        }
    }
    float *values = (float *)z; /* z[r] as COLUMNS floats */
    for (long e = 0; e < EXAMPLES; e++) f[e] = 0.0f;
    for (long r = 0; r < WIDTH; r++)
        for (long p = 0; p < PATCHES; p++)
            for (long e = 0; e < EXAMPLES; e++) {
                float v = values[r * COLUMNS + p * EXAMPLES + e];
                f[e] += v * v * v; /* f_i = Σ_r Σ_j ⟨w_r, X_i[j]⟩³ */
            }
    long count = n - first < EXAMPLES ? n - first : EXAMPLES;
    float y[EXAMPLES], exps[EXAMPLES]; /* padding examples get y = 0, so c = 0 */
    for (long e = 0; e < EXAMPLES; e++) y[e] = e < count ? labels[first + e] : 0.0f;
    for (long e = 0; e < EXAMPLES; e++) exps[e] = expf(y[e] * f[e]);
    for (long e = 0; e < EXAMPLES; e++)
        coefficients[e] = scale * y[e] / (1.0f + exps[e]); /* c_i = −3 y_i σ(−y_i f_i) / N */
    for (long e = 0; e < count; e++) outputs[first + e] = f[e];
    for (long r = 0; r < WIDTH; r++)
        for (long p = 0; p < PATCHES; p++)
            for (long e = 0; e < EXAMPLES; e++) {
                float v = values[r * COLUMNS + p * EXAMPLES + e];
                values[r * COLUMNS + p * EXAMPLES + e] = coefficients[e] * v * v;
            }
    for (long k = 0; k < DIM; k++) { /* one gradient row k at a time: WIDTH sums over the blocks, in order */
        vec partial[WIDTH];
        for (long r = 0; r < WIDTH; r++) partial[r] = (vec){0};
        for (long block = 0; block < BLOCKS; block++) {
            vec row = x[block * DIM + k];
#pragma GCC unroll 16
            for (long r = 0; r < WIDTH; r++) partial[r] += z[r][block] * row; /* c⟨w_r,X[j]⟩² X[j]_k */
        }
        for (long r = 0; r < WIDTH; r++) sums[r][k] += partial[r];
    }
}

/* Examples [first, last) (first a multiple of EXAMPLES) of n for each of `runs` weights (WIDTH × DIM
   each): f into outputs (runs × n), each run's gradient sum into gradients (runs × WIDTH × DIM), its
   lanes in sums (runs × WIDTH × DIM vectors) until the end. */
static void pass(const float *restrict tiles, const float *restrict labels, const float *restrict weights,
                 long runs, long first_example, long last, long n, float *restrict outputs,
                 float *restrict gradients, vec (*restrict sums)[WIDTH][DIM])
{
    for (long run = 0; run < runs; run++)
        for (long r = 0; r < WIDTH; r++)
            for (long k = 0; k < DIM; k++) sums[run][r][k] = (vec){0};
    for (long first = first_example; first < last; first += EXAMPLES) {
        const data_vec *restrict x = (const data_vec *)(tiles + (first / EXAMPLES) * DIM * COLUMNS);
        for (long run = 0; run < runs; run++) /* the tile stays in cache for every run */
            tile_pass(x, labels, weights + run * WIDTH * DIM, first, n, outputs + run * n, sums[run]);
    }
    for (long run = 0; run < runs; run++)
        for (long r = 0; r < WIDTH; r++)
            for (long k = 0; k < DIM; k++) {
                float sum = 0.0f;
                for (long l = 0; l < LANES; l++) sum += sums[run][r][k][l];
                gradients[(run * WIDTH + r) * DIM + k] = sum;
            }
}

struct part {
    const float *tiles, *labels, *weights;
    long runs, first, last, n;
    float *outputs, *gradients;
    vec (*sums)[WIDTH][DIM];
};

static void *run_part(void *argument)
{
    struct part *p = argument;
    pass(p->tiles, p->labels, p->weights, p->runs, p->first, p->last, p->n, p->outputs, p->gradients, p->sums);
    return NULL;
}

/* Each of the `threads` parts on a thread of its own, OpenMP's where asked for and built with it, else
   pthreads; the caller's thread runs part 0. */
static void run_parts(struct part *parts, long threads, int openmp)
{
    if (threads == 1) {
        run_part(&parts[0]);
        return;
    }
#if OPENMP
    if (openmp) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (long t = 0; t < threads; t++) run_part(&parts[t]);
        return;
    }
#endif
    pthread_t ids[threads];
    int started[threads];
    for (long t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, run_part, &parts[t]) == 0;
    run_part(&parts[0]);
    for (long t = 1; t < threads; t++)
        if (started[t]) pthread_join(ids[t], NULL);
        else run_part(&parts[t]); /* a thread that did not start */
}

/* For `runs` weights (runs × WIDTH × DIM): f_i into outputs (runs × n) and ∇ into gradients
   (runs × WIDTH × DIM), on up to `threads` threads (OpenMP's when `openmp` is 1 and the kernel has it).
   `scratch` holds scratch_floats(runs, threads) floats, 64-byte aligned: each thread's lane sums, and the
   other threads' gradient sums. */
long scratch_floats(long runs, long threads) { return runs * WIDTH * DIM * (threads * LANES + threads - 1); }

void cubic_objective(const float *tiles, const float *labels, const float *weights, long runs, long n,
                     long threads, int openmp, float *outputs, float *gradients, float *scratch)
{
    long tile_count = (n + EXAMPLES - 1) / EXAMPLES;
    long most = tile_count / TILES_PER_THREAD;
    long granted = threads;
    if (threads > most) threads = most;
    if (threads < 1) threads = 1;
    vec (*sums)[WIDTH][DIM] = (vec (*)[WIDTH][DIM])scratch;
    float *partials = scratch + runs * WIDTH * DIM * LANES * granted;
    struct part parts[threads];
    for (long t = 0; t < threads; t++) {
        long first = tile_count * t / threads * EXAMPLES, last = tile_count * (t + 1) / threads * EXAMPLES;
        parts[t] = (struct part){tiles, labels, weights, runs, first, last < n ? last : n, n, outputs,
                                 t == 0 ? gradients : partials + (t - 1) * runs * WIDTH * DIM,
                                 sums + t * runs};
    }
    run_parts(parts, threads, openmp);
    for (long t = 1; t < threads; t++)
        for (long i = 0; i < runs * WIDTH * DIM; i++) gradients[i] += parts[t].gradients[i];
}
