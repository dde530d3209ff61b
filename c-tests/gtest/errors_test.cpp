// The errno contract: every mistake gets the kernel's errno (as a negative return), never a crash.
#include "support.hpp"

#include <sys/uio.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

#include <cerrno>
#include <cstring>
#include <vector>

using namespace untorn_test;

class Errors : public ::testing::Test {
 protected:
  void SetUp() override {
    UNTORN_REQUIRE_IMAGES();
    img_ = std::make_unique<Image>(image_path("ext4-4k"));
    ASSERT_EQ(img_->rc(), 0);
  }
  struct untorn_fs *fs() { return img_->fs(); }
  std::unique_ptr<Image> img_;
};

TEST(ErrorsNoImage, NullAndMissingArguments) {
  struct untorn_fs *fs = nullptr;
  EXPECT_EQ(untorn_open_image(nullptr, nullptr, &fs), -EFAULT);
  EXPECT_EQ(untorn_open_image("/nonexistent/untorn.img", nullptr, &fs), -ENOENT);
  EXPECT_EQ(untorn_open_image("/tmp", nullptr, nullptr), -EFAULT);
  EXPECT_EQ(untorn_close_image(nullptr), -EFAULT);
  EXPECT_EQ(untorn_open(nullptr, "/", 0, 0), -EFAULT);
  EXPECT_EQ(untorn_close(nullptr, 3), -EFAULT);
  char buf[8];
  EXPECT_EQ(untorn_pread(nullptr, 3, buf, sizeof buf, 0), -EFAULT);
  EXPECT_EQ(untorn_readlink(nullptr, "/x", buf, sizeof buf), -EFAULT);
}

TEST(ErrorsNoImage, NotAnExt4Image_Einval) {
  char path[] = "/tmp/untorn-errors-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::vector<char> zeros(1 << 20);
  ASSERT_EQ(write(fd, zeros.data(), zeros.size()), (ssize_t)zeros.size());
  close(fd);
  struct untorn_fs *fs = nullptr;
  EXPECT_EQ(untorn_open_image(path, nullptr, &fs), -EINVAL);
  unlink(path);
}

TEST(ErrorsNoImage, Strerror_EverySign_MatchesLibcText) {
  for (int e : {EPERM, ENOENT, EIO, EBADF, EFAULT, EEXIST, ENOTDIR, EISDIR, EINVAL, EFBIG, ENOSPC, EROFS,
                ENAMETOOLONG, ELOOP, EOPNOTSUPP, EUCLEAN, ENOTEMPTY}) {
    ASSERT_NE(untorn_strerror(e), nullptr);
    EXPECT_STREQ(untorn_strerror(-e), untorn_strerror(e));
    EXPECT_STREQ(untorn_strerror(e), strerror(e)) << e;
  }
  EXPECT_NE(untorn_strerror(0), nullptr);
  EXPECT_NE(untorn_strerror(99999), nullptr);
  EXPECT_NE(untorn_strerror(-2147483647 - 1), nullptr);
}

TEST(ErrorsNoImage, Version_IsSemver) {
  const char *v = untorn_version();
  ASSERT_NE(v, nullptr);
  unsigned a, b, c;
  EXPECT_EQ(sscanf(v, "%u.%u.%u", &a, &b, &c), 3) << v;
}

TEST(ErrorsNoImage, OpenOpts_BadSizeAndUnknownFlags_Einval) {
  UNTORN_REQUIRE_IMAGES();
  struct untorn_fs *fs = nullptr;
  struct untorn_open_opts small = {2, 0};
  EXPECT_EQ(untorn_open_image(image_path("ext4-4k").c_str(), &small, &fs), -EINVAL);
  struct untorn_open_opts unknown = {sizeof(unknown), 0x80};
  EXPECT_EQ(untorn_open_image(image_path("ext4-4k").c_str(), &unknown, &fs), -EINVAL);
  struct untorn_open_opts rdonly = {sizeof(rdonly), UNTORN_OPEN_RDONLY};
  ASSERT_EQ(untorn_open_image(image_path("ext4-4k").c_str(), &rdonly, &fs), 0);
  EXPECT_EQ(untorn_open(fs, "/hello.txt", 1 /* O_WRONLY */, 0), -EROFS);
  EXPECT_EQ(untorn_open(fs, "/hello.txt", 2 /* O_RDWR */, 0), -EROFS);
  EXPECT_EQ(untorn_close_image(fs), 0);
}

TEST_F(Errors, Paths) {
  EXPECT_EQ(untorn_open(fs(), "/no-such-file", 0, 0), -ENOENT);
  EXPECT_EQ(untorn_open(fs(), "/hello.txt/x", 0, 0), -ENOTDIR);
  EXPECT_EQ(untorn_open(fs(), "/hello.txt/", 0, 0), -ENOTDIR);
  EXPECT_EQ(untorn_open(fs(), "/hello.txt", 0x10000 /* O_DIRECTORY */, 0), -ENOTDIR);
  EXPECT_EQ(untorn_open(fs(), "/loop-a", 0, 0), -ELOOP);
  EXPECT_EQ(untorn_open(fs(), "/link-fast", 0x20000 /* O_NOFOLLOW */, 0), -ELOOP);
  EXPECT_EQ(untorn_open(fs(), "/link-dangling", 0, 0), -ENOENT);
  EXPECT_EQ(untorn_open(fs(), nullptr, 0, 0), -EFAULT);
  std::string longname = "/" + std::string(256, 'a');
  EXPECT_EQ(untorn_open(fs(), longname.c_str(), 0, 0), -ENAMETOOLONG);
  std::string longpath(5000, '/');
  EXPECT_EQ(untorn_open(fs(), longpath.c_str(), 0, 0), -ENAMETOOLONG);
}

TEST_F(Errors, Descriptors) {
  char buf[16];
  EXPECT_EQ(untorn_pread(fs(), 12345, buf, sizeof buf, 0), -EBADF);
  EXPECT_EQ(untorn_pread(fs(), -1, buf, sizeof buf, 0), -EBADF);
  EXPECT_EQ(untorn_close(fs(), 12345), -EBADF);
  int fd = untorn_open(fs(), "/hello.txt", 0, 0);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(untorn_pread(fs(), fd, nullptr, 16, 0), -EFAULT);
  EXPECT_EQ(untorn_pread(fs(), fd, buf, sizeof buf, -5), -EINVAL);
  EXPECT_EQ(untorn_close(fs(), fd), 0);
  EXPECT_EQ(untorn_close(fs(), fd), -EBADF);
  EXPECT_EQ(untorn_pread(fs(), fd, buf, sizeof buf, 0), -EBADF);
  int dfd = untorn_open(fs(), "/small", 0, 0);
  ASSERT_GE(dfd, 0);
  EXPECT_EQ(untorn_pread(fs(), dfd, buf, sizeof buf, 0), -EISDIR);
  int ffd = untorn_open(fs(), "/hello.txt", 0, 0);
  struct untorn_dirent ent;
  EXPECT_EQ(untorn_readdir(fs(), ffd, &ent, 1), -ENOTDIR);
  EXPECT_EQ(untorn_readdir(fs(), dfd, nullptr, 1), -EFAULT);
  untorn_close(fs(), ffd);
  untorn_close(fs(), dfd);
}

TEST_F(Errors, Preadv2_FlagsAndVectors) {
  int fd = untorn_open(fs(), "/hello.txt", 0, 0);
  ASSERT_GE(fd, 0);
  char a[4], b[64];
  struct iovec iov[2] = {{a, sizeof a}, {b, sizeof b}};
  EXPECT_EQ(untorn_preadv2(fs(), fd, iov, 2, 0, UNTORN_RWF_ATOMIC), -EOPNOTSUPP);  // RWF_ATOMIC on a read
  EXPECT_EQ(untorn_preadv2(fs(), fd, iov, 2, 0, 0x10000000), -EOPNOTSUPP);        // unknown RWF bit
  EXPECT_EQ(untorn_preadv2(fs(), fd, iov, -1, 0, 0), -EINVAL);
  EXPECT_EQ(untorn_preadv2(fs(), fd, iov, 1025, 0, 0), -EINVAL);
  EXPECT_EQ(untorn_preadv2(fs(), fd, nullptr, 2, 0, 0), -EFAULT);
  ssize_t n = untorn_preadv2(fs(), fd, iov, 2, 0, 0);
  EXPECT_EQ(n, 14);  // "hello, untorn\n"
  EXPECT_EQ(std::string(a, 4) + std::string(b, 10), "hello, untorn\n");
  // off -1: the descriptor's position, advanced by each read.
  EXPECT_EQ(untorn_preadv2(fs(), fd, iov, 1, -1, 0), 4);
  EXPECT_EQ(untorn_preadv2(fs(), fd, iov, 1, -1, 0), 4);
  EXPECT_EQ(std::string(a, 4), "o, u");
  untorn_close(fs(), fd);
}

TEST_F(Errors, StatxArguments) {
  struct untorn_statx stx;
  EXPECT_EQ(untorn_statx(fs(), UNTORN_AT_ROOT, "/hello.txt", 0, UNTORN_STATX_BASIC_STATS, nullptr), -EFAULT);
  EXPECT_EQ(untorn_statx(fs(), UNTORN_AT_ROOT, "/hello.txt", 0x80000000, UNTORN_STATX_BASIC_STATS, &stx), -EINVAL);
  EXPECT_EQ(untorn_statx(fs(), UNTORN_AT_ROOT, "/hello.txt", 0, 0x80000000u /* STATX__RESERVED */, &stx), -EINVAL);
  EXPECT_EQ(untorn_statx(fs(), 777, "", 0x1000, UNTORN_STATX_BASIC_STATS, &stx), -EBADF);
  EXPECT_EQ(untorn_statx(fs(), UNTORN_AT_ROOT, "", 0, UNTORN_STATX_BASIC_STATS, &stx), -ENOENT);
}

TEST(ErrorsNoImage, ClosedHandle_Ebadf) {
  UNTORN_REQUIRE_IMAGES();
  struct untorn_fs *fs = nullptr;
  ASSERT_EQ(untorn_open_image(image_path("ext4-4k").c_str(), nullptr, &fs), 0);
  ASSERT_EQ(untorn_close_image(fs), 0);
  EXPECT_EQ(untorn_open(fs, "/hello.txt", 0, 0), -EBADF);
  EXPECT_EQ(untorn_close_image(fs), -EBADF);
}
