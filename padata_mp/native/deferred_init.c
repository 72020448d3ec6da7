/*
 * Deferred struct-page init in C, the same work as padata_mp.mm.pages and padata_mp.mm.init_chunk on
 * the same shared memory: the same struct page layout, free rules, per-section records and chunking.
 * Built two ways (padata_mp.native):
 *
 * - a shared library, loaded with ctypes:
 *     padata_init_chunk()     deferred init's thread_fn for the engine (the C kernel: holes skipped);
 *     padata_store_best_ns()  the store ceiling: pthreads storing over a block, plain or non-temporal.
 * - with -DDEFERRED_INIT_MAIN, the native reference program: every node's job at once on pthreads
 *   claiming chunks from a shared cursor under a mutex, as padata_mt_helper does.
 *     usage: deferred_init MEMMAP PAGEBLOCKS RECORDS TOTAL_PAGES JOB...
 *       JOB = node:zone:start:end:zone_end:threads:chunk_size   (all jobs run at once)
 *     prints: "job NODE NS" per job, then "total NS".  Holes are not supported there: the
 *     benchmark's machines have none.
 * The Python side splices the records into the free lists and verifies.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define SECTION 32768L
#define PAGEBLOCK 512L
#define MAX_ORDER 10
#define PIECE (1L << MAX_ORDER)
#define NR_ORDERS 11
#define MIGRATE_MOVABLE 1
#define VMEMMAP_BASE 0xffffea0000000000UL
#define LRU(pfn) (VMEMMAP_BASE + (uint64_t)(pfn) * 64 + 8)
#define COUNTS(mapcount, refcount) (((uint64_t)(uint32_t)(refcount) << 32) | (uint32_t)(mapcount))
#define BUDDY_COUNTS COUNTS(-1 & ~0x80, 0)

struct page { uint64_t w[8]; };

/* Where one call works: the machine's blocks, the flags of its node and zone. */
struct target {
	struct page *memmap;
	uint8_t *pageblocks;
	int64_t *records; /* [section][order][first, last, count] */
	uint64_t flags;
};

/* Heads freed in one section, in pfn order, before they are linked. */
struct heads {
	long n10, n0;
	long order10[SECTION / PIECE], order0[SECTION];
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000UL + ts.tv_nsec;
}

static void init_page(struct page *p, long pfn, uint64_t flags, uint64_t counts)
{
	p->w[0] = flags;
	p->w[1] = p->w[2] = LRU(pfn);
	p->w[3] = p->w[4] = p->w[5] = 0;
	p->w[6] = counts;
	p->w[7] = 0;
}

/* Free pfns [lo, hi) of one section: whole, aligned pieces as order-10 blocks, the rest one by one. */
static void init_and_free(const struct target *t, long lo, long hi, struct heads *h)
{
	long full_lo = (lo + PIECE - 1) / PIECE * PIECE, full_hi = hi / PIECE * PIECE;
	if (full_lo >= full_hi)
		full_lo = full_hi = hi;
	for (long piece = full_lo; piece < full_hi; piece += PIECE) {
		/* __init_single_page's refcount 1 and __free_pages_core's 0 in one store. */
		for (long pfn = piece; pfn < piece + PIECE; pfn++)
			init_page(&t->memmap[pfn], pfn, t->flags, COUNTS(-1, 0));
		t->memmap[piece].w[6] = BUDDY_COUNTS;
		t->memmap[piece].w[5] = MAX_ORDER;
		memset(&t->pageblocks[piece / PAGEBLOCK], MIGRATE_MOVABLE, PIECE / PAGEBLOCK);
		h->order10[h->n10++] = piece;
	}
	long singles[2][2] = {{lo, full_lo}, {full_hi, hi}};
	for (int s = 0; s < 2; s++) {
		for (long pfn = singles[s][0]; pfn < singles[s][1]; pfn++) {
			init_page(&t->memmap[pfn], pfn, t->flags, BUDDY_COUNTS);
			if (pfn % PAGEBLOCK == 0)
				t->pageblocks[pfn / PAGEBLOCK] = MIGRATE_MOVABLE;
			h->order0[h->n0++] = pfn;
		}
	}
}

static void link_heads(struct page *memmap, const long *heads, long n, int64_t *record)
{
	for (long i = 0; i + 1 < n; i++) {
		memmap[heads[i]].w[1] = LRU(heads[i + 1]);
		memmap[heads[i + 1]].w[2] = LRU(heads[i]);
	}
	record[0] = n ? heads[0] : 0;
	record[1] = n ? heads[n - 1] : 0;
	record[2] = n;
}

/* One section [start, end), less the holes (sorted, disjoint [lo, hi) pairs); then its record. */
static void init_section(const struct target *t, long start, long end, const int64_t *holes, long nholes,
			 struct heads *h)
{
	long at = start;
	h->n10 = h->n0 = 0;
	for (long i = 0; i < nholes && at < end; i++) {
		long lo = holes[2 * i], hi = holes[2 * i + 1];
		if (hi <= at || lo >= end)
			continue;
		if (lo > at)
			init_and_free(t, at, lo, h);
		at = hi;
	}
	if (at < end)
		init_and_free(t, at, end, h);
	int64_t *record = &t->records[(start / SECTION) * NR_ORDERS * 3];
	memset(record, 0, NR_ORDERS * 3 * sizeof(*record));
	link_heads(t->memmap, h->order10, h->n10, &record[MAX_ORDER * 3]);
	link_heads(t->memmap, h->order0, h->n0, &record[0]);
}

static void init_chunk(const struct target *t, long start, long end, long end_pfn, const int64_t *holes,
		       long nholes, struct heads *h)
{
	if (end > end_pfn)
		end = end_pfn;
	for (long s = start; s < end; s += SECTION)
		init_section(t, s, s + SECTION < end ? s + SECTION : end, holes, nholes, h);
}

/*
 * The C kernel: deferred init of [start, end) (whole sections; end clipped to the zone's end_pfn),
 * the holes skipped.  Returns 0, or -22 (EINVAL) for a range that is not whole sections, or -12
 * (ENOMEM).
 */
int padata_init_chunk(uint64_t *memmap, uint8_t *pageblocks, int64_t *records, long start, long end,
		      long end_pfn, uint64_t flags, const int64_t *holes, long nholes)
{
	if (start % SECTION || (end % SECTION && end < end_pfn))
		return -22;
	struct heads *h = malloc(sizeof(*h));
	if (!h)
		return -12;
	struct target t = {(struct page *)memmap, pageblocks, records, flags};
	init_chunk(&t, start, end, end_pfn, holes, nholes, h);
	free(h);
	return 0;
}

/* -- the store ceiling ------------------------------------------------------------------------ */

struct stores {
	uint64_t *words;
	size_t count;
	int nontemporal;
};

static void *store(void *arg)
{
	struct stores *s = arg;
	const uint64_t value = 0x5a5a5a5a5a5a5a5aUL; /* never zeros: memset has a faster path for them */
#if defined(__x86_64__)
	if (s->nontemporal) {
		long long *p = (long long *)s->words;
		for (size_t i = 0; i < s->count; i++)
			_mm_stream_si64(&p[i], (long long)value);
		_mm_sfence();
		return NULL;
	}
#endif
	for (size_t i = 0; i < s->count; i++)
		s->words[i] = value;
	return NULL;
}

/* Whether padata_store_best_ns can store non-temporally on this architecture. */
int padata_has_nontemporal(void)
{
#if defined(__x86_64__)
	return 1;
#else
	return 0;
#endif
}

/*
 * STREAM's habit: the best of `repeat` runs of `threads` pthreads each storing a non-zero value over
 * its share of the block's `bytes` (the block already mapped and faulted in); plain stores, or
 * non-temporal ones where the architecture has them.  Returns the best run's nanoseconds, or 0 where
 * threads could not be made.
 */
uint64_t padata_store_best_ns(void *block, size_t bytes, int threads, int nontemporal, int repeat)
{
	pthread_t *tids = calloc(threads, sizeof(*tids));
	struct stores *parts = calloc(threads, sizeof(*parts));
	size_t words = bytes / 8, share = (words / threads + 7) / 8 * 8; /* whole cache lines each */
	uint64_t best = 0;
	if (!tids || !parts)
		goto out;
	for (int i = 0; i < threads; i++) {
		size_t first = share * i < words ? share * i : words;
		size_t last = first + share < words ? first + share : words;
		parts[i] = (struct stores){(uint64_t *)block + first, last - first, nontemporal};
	}
	for (int r = 0; r < repeat; r++) {
		uint64_t began = now_ns();
		int made = 0;
		while (made < threads && pthread_create(&tids[made], NULL, store, &parts[made]) == 0)
			made++;
		for (int i = 0; i < made; i++)
			pthread_join(tids[i], NULL);
		uint64_t ns = now_ns() - began;
		if (made < threads) {
			best = 0;
			goto out;
		}
		if (!best || ns < best)
			best = ns;
	}
out:
	free(tids);
	free(parts);
	return best;
}

#ifdef DEFERRED_INIT_MAIN
/* -- the native reference program -------------------------------------------------------------- */

#define NODES_PGSHIFT (64 - 10)
#define ZONES_PGSHIFT (NODES_PGSHIFT - 3)
#define LAST_CPUPID_PGSHIFT (ZONES_PGSHIFT - 21)
#define LAST_CPUPID_MASK ((1UL << 21) - 1)

struct job {
	struct target target;
	int node, threads;
	long start, size, zone_end, chunk_size;
	pthread_mutex_t lock;
	uint64_t ns;
};

static void *map(const char *path)
{
	int fd = open(path, O_RDWR);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) { perror(path); exit(1); }
	void *p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED) { perror("mmap"); exit(1); }
	close(fd);
	return p;
}

/* padata_mt_helper: claim the next chunk under the lock; each ends on a chunk_size multiple. */
static void *helper(void *arg)
{
	struct job *job = arg;
	struct heads *h = malloc(sizeof(*h));
	for (;;) {
		pthread_mutex_lock(&job->lock);
		if (job->size == 0) { pthread_mutex_unlock(&job->lock); break; }
		long s = job->start;
		long n = ((s / job->chunk_size) + 1) * job->chunk_size - s;
		if (n > job->size) n = job->size;
		job->start += n;
		job->size -= n;
		pthread_mutex_unlock(&job->lock);
		init_chunk(&job->target, s, s + n, job->zone_end, NULL, 0, h);
	}
	free(h);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s MEMMAP PAGEBLOCKS RECORDS TOTAL_PAGES JOB...\n", argv[0]);
		return 2;
	}
	struct target machine = {map(argv[1]), map(argv[2]), map(argv[3]), 0};
	int njobs = argc - 5, total_threads = 0;
	struct job *jobs = calloc(njobs, sizeof(*jobs));
	for (int j = 0; j < njobs; j++) {
		struct job *job = &jobs[j];
		int zone;
		long end;
		if (sscanf(argv[5 + j], "%d:%d:%ld:%ld:%ld:%d:%ld", &job->node, &zone, &job->start, &end,
			   &job->zone_end, &job->threads, &job->chunk_size) != 7 || job->threads < 1 || job->chunk_size < 1) {
			fprintf(stderr, "bad job %s\n", argv[5 + j]);
			return 2;
		}
		job->size = end - job->start;
		job->target = machine;
		job->target.flags = ((uint64_t)job->node << NODES_PGSHIFT) | ((uint64_t)zone << ZONES_PGSHIFT) |
				    (LAST_CPUPID_MASK << LAST_CPUPID_PGSHIFT);
		pthread_mutex_init(&job->lock, NULL);
		total_threads += job->threads;
	}
	pthread_t *tids = calloc(total_threads, sizeof(*tids));
	uint64_t began = now_ns();
	int t = 0;
	for (int j = 0; j < njobs; j++)
		for (int i = 0; i < jobs[j].threads; i++)
			pthread_create(&tids[t++], NULL, helper, &jobs[j]);
	t = 0;
	for (int j = 0; j < njobs; j++) {
		for (int i = 0; i < jobs[j].threads; i++)
			pthread_join(tids[t++], NULL);
		jobs[j].ns = now_ns() - began;
	}
	uint64_t total = now_ns() - began;
	for (int j = 0; j < njobs; j++)
		printf("job %d %lu\n", jobs[j].node, (unsigned long)jobs[j].ns);
	printf("total %lu\n", (unsigned long)total);
	return 0;
}
#endif
