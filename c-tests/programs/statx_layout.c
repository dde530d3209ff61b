/* struct untorn_statx must be the Linux UAPI struct statx byte for byte: every offset the spec
 * (shared/docs/semantics.md, from include/uapi/linux/stat.h) gives, and glibc's struct statx for the
 * fields Debian's headers have. struct untorn_dirent is checked against docs/c-api.md.
 * Exit 0 pass, 1 fail. */
#define _GNU_SOURCE
#include <untorn.h>

#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>

static int failures;

#define CHECK_AT(type, field, want)                                                             \
	do {                                                                                    \
		if (offsetof(type, field) != (want)) {                                          \
			fprintf(stderr, "offsetof(%s, %s) = %zu, spec says %zu\n", #type, #field, \
				offsetof(type, field), (size_t)(want));                          \
			failures++;                                                             \
		}                                                                               \
	} while (0)

#define SAME_AS_GLIBC(field)                                                                       \
	do {                                                                                       \
		if (offsetof(struct untorn_statx, field) != offsetof(struct statx, field) ||       \
		    sizeof(((struct untorn_statx *)0)->field) != sizeof(((struct statx *)0)->field)) { \
			fprintf(stderr, "%s differs from glibc's struct statx\n", #field);          \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

int main(void)
{
	CHECK_AT(struct untorn_statx, stx_mask, 0x00);
	CHECK_AT(struct untorn_statx, stx_blksize, 0x04);
	CHECK_AT(struct untorn_statx, stx_attributes, 0x08);
	CHECK_AT(struct untorn_statx, stx_nlink, 0x10);
	CHECK_AT(struct untorn_statx, stx_uid, 0x14);
	CHECK_AT(struct untorn_statx, stx_gid, 0x18);
	CHECK_AT(struct untorn_statx, stx_mode, 0x1c);
	CHECK_AT(struct untorn_statx, stx_ino, 0x20);
	CHECK_AT(struct untorn_statx, stx_size, 0x28);
	CHECK_AT(struct untorn_statx, stx_blocks, 0x30);
	CHECK_AT(struct untorn_statx, stx_attributes_mask, 0x38);
	CHECK_AT(struct untorn_statx, stx_atime, 0x40);
	CHECK_AT(struct untorn_statx, stx_btime, 0x50);
	CHECK_AT(struct untorn_statx, stx_ctime, 0x60);
	CHECK_AT(struct untorn_statx, stx_mtime, 0x70);
	CHECK_AT(struct untorn_statx, stx_rdev_major, 0x80);
	CHECK_AT(struct untorn_statx, stx_rdev_minor, 0x84);
	CHECK_AT(struct untorn_statx, stx_dev_major, 0x88);
	CHECK_AT(struct untorn_statx, stx_dev_minor, 0x8c);
	CHECK_AT(struct untorn_statx, stx_mnt_id, 0x90);
	CHECK_AT(struct untorn_statx, stx_dio_mem_align, 0x98);
	CHECK_AT(struct untorn_statx, stx_dio_offset_align, 0x9c);
	CHECK_AT(struct untorn_statx, stx_subvol, 0xa0);
	CHECK_AT(struct untorn_statx, stx_atomic_write_unit_min, 0xa8);
	CHECK_AT(struct untorn_statx, stx_atomic_write_unit_max, 0xac);
	CHECK_AT(struct untorn_statx, stx_atomic_write_segments_max, 0xb0);
	CHECK_AT(struct untorn_statx, stx_dio_read_offset_align, 0xb4);
	CHECK_AT(struct untorn_statx, stx_atomic_write_unit_max_opt, 0xb8);
	if (sizeof(struct untorn_statx) != 256) {
		fprintf(stderr, "sizeof(struct untorn_statx) = %zu, not 256\n", sizeof(struct untorn_statx));
		failures++;
	}
	CHECK_AT(struct untorn_statx_timestamp, tv_sec, 0);
	CHECK_AT(struct untorn_statx_timestamp, tv_nsec, 8);
	if (sizeof(struct untorn_statx_timestamp) != 16) {
		fprintf(stderr, "sizeof(struct untorn_statx_timestamp) != 16\n");
		failures++;
	}

	SAME_AS_GLIBC(stx_mask);
	SAME_AS_GLIBC(stx_blksize);
	SAME_AS_GLIBC(stx_attributes);
	SAME_AS_GLIBC(stx_nlink);
	SAME_AS_GLIBC(stx_uid);
	SAME_AS_GLIBC(stx_gid);
	SAME_AS_GLIBC(stx_mode);
	SAME_AS_GLIBC(stx_ino);
	SAME_AS_GLIBC(stx_size);
	SAME_AS_GLIBC(stx_blocks);
	SAME_AS_GLIBC(stx_attributes_mask);
	SAME_AS_GLIBC(stx_atime);
	SAME_AS_GLIBC(stx_btime);
	SAME_AS_GLIBC(stx_ctime);
	SAME_AS_GLIBC(stx_mtime);
	SAME_AS_GLIBC(stx_rdev_major);
	SAME_AS_GLIBC(stx_dev_minor);

	CHECK_AT(struct untorn_dirent, d_ino, 0);
	CHECK_AT(struct untorn_dirent, d_off, 8);
	CHECK_AT(struct untorn_dirent, d_type, 16);
	CHECK_AT(struct untorn_dirent, d_namelen, 17);
	CHECK_AT(struct untorn_dirent, d_name, 24);
	if (sizeof(struct untorn_dirent) != 280) {
		fprintf(stderr, "sizeof(struct untorn_dirent) = %zu, not 280\n", sizeof(struct untorn_dirent));
		failures++;
	}
	CHECK_AT(struct untorn_open_opts, size, 0);
	CHECK_AT(struct untorn_open_opts, flags, 4);

	if (failures) {
		fprintf(stderr, "statx_layout: %d failures\n", failures);
		return 1;
	}
	printf("statx_layout: struct untorn_statx matches the UAPI layout\n");
	return 0;
}
