/* untorn_demo IMAGE [PATH]: open an ext4 image with libuntorn, list its root directory with
 * each entry's type and size, and print a file (PATH, default /hello.txt). */
#include <untorn.h>

#include <stdio.h>
#include <sys/stat.h>

static const char *type_name(unsigned mode)
{
	switch (mode & S_IFMT) {
	case S_IFDIR: return "dir ";
	case S_IFLNK: return "link";
	case S_IFREG: return "file";
	default: return "????";
	}
}

int main(int argc, char **argv)
{
	struct untorn_open_opts opts = { .size = sizeof(opts), .flags = UNTORN_OPEN_RDONLY };
	const char *path = argc > 2 ? argv[2] : "/hello.txt";
	struct untorn_dirent ents[64];
	struct untorn_fs *fs;
	char buf[4096];
	int ret, dir, fd, n;
	int64_t off = 0;
	ssize_t got;

	if (argc < 2) {
		fprintf(stderr, "usage: %s IMAGE [PATH]\n", argv[0]);
		return 2;
	}
	ret = untorn_open_image(argv[1], &opts, &fs);
	if (ret < 0) {
		fprintf(stderr, "%s: %s\n", argv[1], untorn_strerror(ret));
		return 1;
	}
	printf("libuntorn %s: %s\n\n", untorn_version(), argv[1]);

	dir = untorn_open(fs, "/", 0, 0);
	while (dir >= 0 && (n = untorn_readdir(fs, dir, ents, 64)) > 0) {
		for (int i = 0; i < n; i++) {
			struct untorn_statx stx;
			if (untorn_statx(fs, dir, ents[i].d_name, 0x100 /* AT_SYMLINK_NOFOLLOW */,
					 UNTORN_STATX_BASIC_STATS, &stx) == 0)
				printf("  %s %10llu  %s\n", type_name(stx.stx_mode),
				       (unsigned long long)stx.stx_size, ents[i].d_name);
		}
	}

	fd = untorn_open(fs, path, 0, 0);
	if (fd < 0) {
		fprintf(stderr, "%s: %s\n", path, untorn_strerror(fd));
		untorn_close_image(fs);
		return 1;
	}
	printf("\n--- %s ---\n", path);
	while ((got = untorn_pread(fs, fd, buf, sizeof(buf), off)) > 0) {
		fwrite(buf, 1, (size_t)got, stdout);
		off += got;
	}
	untorn_close_image(fs);
	return got < 0;
}
