// The Linux kernel as the oracle: each config's image is loop-mounted read-only and every file the
// kernel reads, and every statx(2) it reports (times to the nanosecond), equals what untorn gives.
// Needs root and a working loop mount; skips with the reason otherwise.
#include "support.hpp"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

using namespace untorn_test;
namespace fs = std::filesystem;

class KernelMount : public ::testing::TestWithParam<std::string> {};

namespace {
struct Mounted {
  std::string image, dir;
  bool ok = false;
  std::string why;
  explicit Mounted(const std::string &config) {
    char tmpl[] = "/tmp/untorn-kmount-XXXXXX";
    dir = mkdtemp(tmpl) ? tmpl : "";
    image = dir + ".img";
    std::string out;
    if (run("cp --sparse=always " + shell_quote(image_path(config)) + " " + shell_quote(image), &out) != 0) {
      why = "copy failed: " + out;
      return;
    }
    if (run("mount -o loop,ro,noload " + shell_quote(image) + " " + shell_quote(dir), &out) != 0) {
      why = "mount -o loop,ro failed: " + out;
      return;
    }
    ok = true;
  }
  ~Mounted() {
    if (ok) run("umount " + shell_quote(dir), nullptr);
    rmdir(dir.c_str());
    unlink(image.c_str());
  }
};

struct KernelStatx {
  unsigned char raw[256];
};

// The kernel's statx, through the raw syscall (Debian 12's headers lack the newest fields).
int kernel_statx(const std::string &path, KernelStatx *out) {
  return (int)syscall(SYS_statx, AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, 0xfff /* basic + btime */, out->raw);
}
}  // namespace

TEST_P(KernelMount, EveryFileAndStat_EqualKernel) {
  UNTORN_REQUIRE_IMAGES();
  if (geteuid() != 0) GTEST_SKIP() << "needs root for mount -o loop";
  Mounted m(GetParam());
  if (!m.ok) GTEST_SKIP() << m.why;
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0);
  int compared = 0;
  for (auto &e : fs::recursive_directory_iterator(m.dir)) {
    std::string rel = "/" + e.path().lexically_relative(m.dir).generic_string();
    KernelStatx k;
    ASSERT_EQ(kernel_statx(e.path().string(), &k), 0) << rel;
    struct untorn_statx u;
    ASSERT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, rel.c_str(), 0x100, UNTORN_STATX_BASIC_STATS | UNTORN_STATX_BTIME, &u), 0) << rel;
    struct untorn_statx kk;
    memcpy(&kk, k.raw, sizeof kk);
    std::string ctx = GetParam() + " " + rel;
    EXPECT_EQ(u.stx_ino, kk.stx_ino) << ctx;
    EXPECT_EQ(u.stx_mode, kk.stx_mode) << ctx;
    EXPECT_EQ(u.stx_nlink, kk.stx_nlink) << ctx;
    EXPECT_EQ(u.stx_uid, kk.stx_uid) << ctx;
    EXPECT_EQ(u.stx_gid, kk.stx_gid) << ctx;
    EXPECT_EQ(u.stx_size, kk.stx_size) << ctx;
    EXPECT_EQ(u.stx_blocks, kk.stx_blocks) << ctx;
    for (auto [a, b, what] : {std::tuple{u.stx_mtime, kk.stx_mtime, "mtime"}, {u.stx_ctime, kk.stx_ctime, "ctime"},
                              {u.stx_atime, kk.stx_atime, "atime"}}) {
      EXPECT_EQ(a.tv_sec, b.tv_sec) << ctx << " " << what;
      EXPECT_EQ(a.tv_nsec, b.tv_nsec) << ctx << " " << what;
    }
    EXPECT_EQ(u.stx_mask & UNTORN_STATX_BTIME, kk.stx_mask & UNTORN_STATX_BTIME) << ctx;
    if (kk.stx_mask & UNTORN_STATX_BTIME) {
      EXPECT_EQ(u.stx_btime.tv_sec, kk.stx_btime.tv_sec) << ctx;
      EXPECT_EQ(u.stx_btime.tv_nsec, kk.stx_btime.tv_nsec) << ctx;
    }
    if (e.is_symlink()) {
      char a[4096], b[4096];
      ssize_t n = untorn_readlink(img.fs(), rel.c_str(), a, sizeof a);
      ssize_t w = readlink(e.path().c_str(), b, sizeof b);
      EXPECT_EQ(std::string(a, n > 0 ? (size_t)n : 0), std::string(b, w > 0 ? (size_t)w : 0)) << ctx;
    } else if (e.is_regular_file()) {
      int err;
      auto got = read_untorn(img.fs(), rel, &err);
      ASSERT_EQ(err, 0) << ctx;
      EXPECT_TRUE(got == read_host(e.path())) << ctx << ": bytes differ from the kernel's";
    }
    compared++;
  }
  EXPECT_GT(compared, 5000);
}

INSTANTIATE_TEST_SUITE_P(Configs, KernelMount, ::testing::ValuesIn(kConfigs),
                         [](const auto &info) { std::string s = info.param; std::replace(s.begin(), s.end(), '-', '_'); return s; });
