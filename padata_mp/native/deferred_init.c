/*
 * The native reference for `padata-mp bench --native`: the same deferred struct-page init as
 * padata_mp.pages and padata_mp.mm.init_chunk, on the same shared memory, with the same struct page
 * layout, free rules, per-section records and chunking, on pthreads claiming chunks from a shared
 * cursor under a mutex (padata_mt_helper).  The Python side splices and verifies its result.
 *
 * usage: deferred_init MEMMAP PAGEBLOCKS RECORDS TOTAL_PAGES JOB...
 *   JOB = node:zone:start:end:zone_end:threads:chunk_size   (all jobs run at once)
 * prints: "job NODE NS" per job, then "total NS".
 * Holes are not supported: the benchmark's machines have none.
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

#define SECTION 32768L
#define PAGEBLOCK 512L
#define MAX_ORDER 10
#define PIECE (1L << MAX_ORDER)
#define NR_ORDERS 11
#define MIGRATE_MOVABLE 1
#define VMEMMAP_BASE 0xffffea0000000000UL
#define LRU(pfn) (VMEMMAP_BASE + (uint64_t)(pfn) * 64 + 8)
#define NODES_PGSHIFT (64 - 10)
#define ZONES_PGSHIFT (NODES_PGSHIFT - 3)
#define LAST_CPUPID_PGSHIFT (ZONES_PGSHIFT - 21)
#define LAST_CPUPID_MASK ((1UL << 21) - 1)
#define COUNTS(mapcount, refcount) (((uint64_t)(uint32_t)(refcount) << 32) | (uint32_t)(mapcount))

struct page { uint64_t w[8]; };

struct job {
	int node, zone, threads;
	long start, size, end, zone_end, chunk_size;
	pthread_mutex_t lock;
	uint64_t flags;
	uint64_t ns;
};

static struct page *memmap;
static uint8_t *pageblocks;
static int64_t *records; /* [section][order][first, last, count] */

static void *map(const char *path, size_t *len)
{
	int fd = open(path, O_RDWR);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) { perror(path); exit(1); }
	void *p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (p == MAP_FAILED) { perror("mmap"); exit(1); }
	close(fd);
	*len = st.st_size;
	return p;
}

static void link_heads(long *heads, long n, int64_t *record)
{
	for (long i = 0; i + 1 < n; i++) {
		memmap[heads[i]].w[1] = LRU(heads[i + 1]);
		memmap[heads[i + 1]].w[2] = LRU(heads[i]);
	}
	record[0] = n ? heads[0] : 0;
	record[1] = n ? heads[n - 1] : 0;
	record[2] = n;
}

static void init_page(long pfn, uint64_t flags)
{
	struct page *p = &memmap[pfn];
	p->w[0] = flags;
	p->w[1] = p->w[2] = LRU(pfn);
	p->w[3] = p->w[4] = p->w[5] = 0;
	p->w[6] = COUNTS(-1, 1);
	p->w[7] = 0;
}

/* One section: per MAX_ORDER piece, init every struct page, then free the piece. */
static void init_section(struct job *job, long start, long end, long *h10, long *h0)
{
	long n10 = 0, n0 = 0;
	for (long piece = start; piece < end; piece += PIECE) {
		long top = piece + PIECE < end ? piece + PIECE : end;
		for (long pfn = piece; pfn < top; pfn++)
			init_page(pfn, job->flags);
		if (top - piece == PIECE) {
			for (long pfn = piece; pfn < top; pfn++)
				memmap[pfn].w[6] = COUNTS(-1, 0);
			memmap[piece].w[6] = COUNTS(-1 & ~0x80, 0);
			memmap[piece].w[5] = MAX_ORDER;
			memset(&pageblocks[piece / PAGEBLOCK], MIGRATE_MOVABLE, PIECE / PAGEBLOCK);
			h10[n10++] = piece;
		} else {
			for (long pfn = piece; pfn < top; pfn++) {
				memmap[pfn].w[6] = COUNTS(-1 & ~0x80, 0);
				if (pfn % PAGEBLOCK == 0)
					pageblocks[pfn / PAGEBLOCK] = MIGRATE_MOVABLE;
				h0[n0++] = pfn;
			}
		}
	}
	int64_t *record = &records[(start / SECTION) * NR_ORDERS * 3];
	memset(record, 0, NR_ORDERS * 3 * sizeof(*record));
	link_heads(h10, n10, &record[MAX_ORDER * 3]);
	link_heads(h0, n0, &record[0]);
}

static void init_chunk(struct job *job, long start, long end, long *h10, long *h0)
{
	if (end > job->zone_end)
		end = job->zone_end;
	for (long s = start; s < end; s += SECTION)
		init_section(job, s, s + SECTION < end ? s + SECTION : end, h10, h0);
}

/* padata_mt_helper: claim the next chunk under the lock; each ends on a chunk_size multiple. */
static void *helper(void *arg)
{
	struct job *job = arg;
	long *h10 = malloc(sizeof(long) * SECTION / PIECE), *h0 = malloc(sizeof(long) * SECTION);
	for (;;) {
		pthread_mutex_lock(&job->lock);
		if (job->size == 0) { pthread_mutex_unlock(&job->lock); break; }
		long s = job->start;
		long n = ((s / job->chunk_size) + 1) * job->chunk_size - s;
		if (n > job->size) n = job->size;
		job->start += n;
		job->size -= n;
		pthread_mutex_unlock(&job->lock);
		init_chunk(job, s, s + n, h10, h0);
	}
	free(h10);
	free(h0);
	return NULL;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000UL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s MEMMAP PAGEBLOCKS RECORDS TOTAL_PAGES JOB...\n", argv[0]);
		return 2;
	}
	size_t len;
	memmap = map(argv[1], &len);
	pageblocks = map(argv[2], &len);
	records = map(argv[3], &len);
	int njobs = argc - 5, total_threads = 0;
	struct job *jobs = calloc(njobs, sizeof(*jobs));
	for (int j = 0; j < njobs; j++) {
		struct job *job = &jobs[j];
		if (sscanf(argv[5 + j], "%d:%d:%ld:%ld:%ld:%d:%ld", &job->node, &job->zone, &job->start, &job->end,
			   &job->zone_end, &job->threads, &job->chunk_size) != 7 || job->threads < 1 || job->chunk_size < 1) {
			fprintf(stderr, "bad job %s\n", argv[5 + j]);
			return 2;
		}
		job->size = job->end - job->start;
		job->flags = ((uint64_t)job->node << NODES_PGSHIFT) | ((uint64_t)job->zone << ZONES_PGSHIFT) |
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
