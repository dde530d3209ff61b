/* Reads files of every fixture image through libuntorn and compares them with the host tree they
 * were made from: read_file [images-dir]. Exit 0 pass, 1 fail, 77 skip. */
#include <untorn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const files[] = {"/hello.txt", "/one-byte", "/size-4097", "/multi-mib", "/fragmented"};

static long slurp_host(const char *path, unsigned char **out)
{
	FILE *f = fopen(path, "rb");
	long n;
	if (!f)
		return -1;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	*out = malloc((size_t)n + 1);
	if (fread(*out, 1, (size_t)n, f) != (size_t)n)
		n = -1;
	fclose(f);
	return n;
}

static int compare(struct untorn_fs *fs, const char *dir, const char *name)
{
	char host[4096];
	unsigned char *want = NULL, *got;
	long n;
	int fd, ret = 0;
	ssize_t r;

	snprintf(host, sizeof(host), "%s/tree%s", dir, name);
	n = slurp_host(host, &want);
	if (n < 0) {
		fprintf(stderr, "%s: cannot read the host copy\n", host);
		return 1;
	}
	got = malloc((size_t)n + 1);
	fd = untorn_open(fs, name, 0, 0);
	if (fd < 0) {
		fprintf(stderr, "untorn_open %s: %s\n", name, untorn_strerror(fd));
		ret = 1;
		goto out;
	}
	r = untorn_pread(fs, fd, got, (size_t)n + 1, 0);
	if (r != n || memcmp(got, want, (size_t)n) != 0) {
		fprintf(stderr, "%s: read %zd bytes, want %ld %s\n", name, r, n, r == n ? "(contents differ)" : "");
		ret = 1;
	}
	untorn_close(fs, fd);
out:
	free(got);
	free(want);
	return ret;
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : getenv("UNTORN_TEST_IMAGES");
	const char *configs[] = {"ext4-4k", "ext4-1k", "ext4-no64-nocsum", "ext4-bigalloc", "ext3", "ext4-128inode", "ext4-metabg"};
	int failures = 0;

	if (!dir || !*dir) {
		printf("SKIP: no images (pass a directory or set UNTORN_TEST_IMAGES)\n");
		return 77;
	}
	for (size_t c = 0; c < sizeof(configs) / sizeof(*configs); c++) {
		char image[4096];
		struct untorn_open_opts opts = {sizeof(opts), UNTORN_OPEN_RDONLY};
		struct untorn_fs *fs;
		int ret;

		snprintf(image, sizeof(image), "%s/%s.img", dir, configs[c]);
		ret = untorn_open_image(image, &opts, &fs);
		if (ret < 0) {
			fprintf(stderr, "%s: %s\n", image, untorn_strerror(ret));
			failures++;
			continue;
		}
		for (size_t i = 0; i < sizeof(files) / sizeof(*files); i++)
			failures += compare(fs, dir, files[i]);
		untorn_close_image(fs);
	}
	if (failures) {
		fprintf(stderr, "read_file: %d failures\n", failures);
		return 1;
	}
	printf("read_file: %zu files x %zu images equal the host tree\n", sizeof(files) / sizeof(*files),
	       sizeof(configs) / sizeof(*configs));
	return 0;
}
