/* kill_workload IMAGE PATH: appends position-determined bytes to PATH in the image through
 * libuntorn, fsyncs after each append and then prints the acknowledged file size, forever; the
 * crash test SIGKILLs it at a random moment. When the image is full it syncs what it has and waits
 * for the kill (the appends are fast enough to fill a test image before it comes). Exit 1 on any
 * other error. */
#include <untorn.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <errno.h>

/* The byte at file offset `off`: any byte the file shows must equal it. */
static unsigned char pattern(long long off)
{
	unsigned long long x = (unsigned long long)off * 0x9E3779B97F4A7C15ull;
	return (unsigned char)(x >> 56);
}

int main(int argc, char **argv)
{
	struct untorn_fs *fs;
	static unsigned char buf[1 << 17];
	long long size = 0;
	unsigned seed = 1;
	int ret, fd;

	if (argc < 3)
		return 2;
	ret = untorn_open_image(argv[1], NULL, &fs);
	if (ret < 0) {
		fprintf(stderr, "open %s: %s\n", argv[1], untorn_strerror(ret));
		return 1;
	}
	fd = untorn_open(fs, argv[2], 2 /* O_RDWR */, 0);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", argv[2], untorn_strerror(fd));
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) {
		size_t len;
		seed = seed * 1103515245u + 12345u;
		len = 1 + (seed >> 8) % sizeof(buf);
		for (size_t i = 0; i < len; i++)
			buf[i] = pattern(size + (long long)i);
		ssize_t n = untorn_pwrite(fs, fd, buf, len, size);
		if (n == -ENOSPC) {
			if (untorn_fsync(fs, fd) != 0)
				return 1;
			printf("%lld\n", size);
			for (;;)
				pause();
		}
		if (n <= 0) {
			fprintf(stderr, "pwrite at %lld: %s\n", size, untorn_strerror((int)n));
			return 1;
		}
		size += (long long)n; /* a short write at a full image: the next one says ENOSPC */
		if ((seed >> 4) % 3 == 0)
			continue; /* not every append is synced: those may or may not survive */
		ret = untorn_fsync(fs, fd);
		if (ret != 0) {
			fprintf(stderr, "fsync: %s\n", untorn_strerror(ret));
			return 1;
		}
		printf("%lld\n", size);
	}
}
