/* The errno contract from plain C: negative errnos, never a crash. Exit 0 pass, 1 fail, 77 skip. */
#include <untorn.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

static int failures;

#define EXPECT(call, want)                                                                     \
	do {                                                                                   \
		long got_ = (long)(call);                                                      \
		if (got_ != (want)) {                                                          \
			fprintf(stderr, "%s = %ld (%s), want %ld\n", #call, got_,              \
				untorn_strerror((int)got_), (long)(want));                     \
			failures++;                                                            \
		}                                                                              \
	} while (0)

int main(void)
{
	const char *dir = getenv("UNTORN_TEST_IMAGES");
	char image[4096], buf[64];
	struct untorn_fs *fs = NULL;
	int fd;

	EXPECT(untorn_open_image(NULL, NULL, &fs), -EFAULT);
	EXPECT(untorn_open_image("/nonexistent.img", NULL, &fs), -ENOENT);
	EXPECT(untorn_pread(NULL, 0, buf, sizeof(buf), 0), -EFAULT);
	if (!dir || !*dir) {
		printf("SKIP: UNTORN_TEST_IMAGES not set\n");
		return failures ? 1 : 77;
	}
	snprintf(image, sizeof(image), "%s/ext4-4k.img", dir);
	EXPECT(untorn_open_image(image, NULL, &fs), 0);
	if (!fs)
		return 1;
	EXPECT(untorn_open(fs, "/missing", 0, 0), -ENOENT);
	EXPECT(untorn_open(fs, "/hello.txt/x", 0, 0), -ENOTDIR);
	EXPECT(untorn_pread(fs, 999, buf, sizeof(buf), 0), -EBADF);
	fd = untorn_open(fs, "/small", 0, 0);
	EXPECT(fd >= 0, 1);
	EXPECT(untorn_pread(fs, fd, buf, sizeof(buf), 0), -EISDIR);
	EXPECT(untorn_close(fs, fd), 0);
	EXPECT(untorn_close_image(fs), 0);
	if (failures) {
		fprintf(stderr, "errors: %d failures\n", failures);
		return 1;
	}
	printf("errors: all errnos as expected\n");
	return 0;
}
