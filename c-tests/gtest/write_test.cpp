// Writing through the C API: pwrite/pwritev2/fsync on copies of the fixture images, then
// debugfs (dump) and e2fsck -fn judge the result; the errno contract of the write calls.
#include "support.hpp"

#include <signal.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sstream>

#include <cerrno>
#include <random>

using namespace untorn_test;

namespace {
std::vector<unsigned char> debugfs_dump(const std::string &image, const std::string &file) {
  char tmpl[] = "/tmp/untorn-dump-XXXXXX";
  int fd = mkstemp(tmpl);
  close(fd);
  std::string out;
  run("debugfs -R " + shell_quote("dump " + file + " " + tmpl) + " " + shell_quote(image), &out);
  auto bytes = read_host(tmpl);
  unlink(tmpl);
  return bytes;
}
}  // namespace

class Write : public ::testing::TestWithParam<std::string> {};

TEST_P(Write, PwriteAndPwritev2ThenFsync_DebugfsAndFsckAgree) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy(GetParam());
  ASSERT_FALSE(copy.path.empty());
  auto model = read_host(tree_dir() + "/size-4097");
  std::mt19937 rng(42);
  {
    Image img(copy.path, 0);
    ASSERT_EQ(img.rc(), 0) << untorn_strerror(img.rc());
    int fd = untorn_open(img.fs(), "/size-4097", 2 /* O_RDWR */, 0);
    ASSERT_GE(fd, 0) << untorn_strerror(fd);
    for (int i = 0; i < 50; i++) {
      size_t off = rng() % (model.size() + 20000), len = 1 + rng() % 9000;
      std::vector<unsigned char> data(len);
      for (auto &b : data) b = (unsigned char)rng();
      if (i % 2 == 0) {
        ASSERT_EQ(untorn_pwrite(img.fs(), fd, data.data(), len, (int64_t)off), (ssize_t)len);
      } else {
        size_t half = len / 2;
        struct iovec iov[2] = {{data.data(), half}, {data.data() + half, len - half}};
        ASSERT_EQ(untorn_pwritev2(img.fs(), fd, iov, 2, (int64_t)off, i % 3 == 0 ? UNTORN_RWF_DSYNC : 0), (ssize_t)len);
      }
      if (model.size() < off + len) model.resize(off + len, 0);
      std::copy(data.begin(), data.end(), model.begin() + (long)off);
    }
    EXPECT_EQ(untorn_fsync(img.fs(), fd), 0);
    EXPECT_EQ(untorn_fdatasync(img.fs(), fd), 0);
    std::vector<unsigned char> back(model.size() + 10);
    EXPECT_EQ(untorn_pread(img.fs(), fd, back.data(), back.size(), 0), (ssize_t)model.size());
    back.resize(model.size());
    EXPECT_TRUE(back == model);
  }
  std::string out;
  EXPECT_EQ(run("e2fsck -fn " + shell_quote(copy.path), &out), 0) << out;
  EXPECT_TRUE(debugfs_dump(copy.path, "/size-4097") == model) << "debugfs reads different bytes";
}

TEST(WriteErrors, Contract) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-4k");
  char b[16] = {0};
  {
    Image ro(copy.path);  // UNTORN_OPEN_RDONLY
    ASSERT_EQ(ro.rc(), 0);
    EXPECT_EQ(untorn_open(ro.fs(), "/size-4097", 2, 0), -EROFS);
    int fd = untorn_open(ro.fs(), "/size-4097", 0, 0);
    EXPECT_EQ(untorn_pwrite(ro.fs(), fd, b, sizeof b, 0), -EBADF);
  }
  Image img(copy.path, 0);
  ASSERT_EQ(img.rc(), 0);
  int fd = untorn_open(img.fs(), "/size-4097", 2, 0);
  ASSERT_GE(fd, 0);
  struct iovec iov = {b, sizeof b};
  EXPECT_EQ(untorn_pwrite(img.fs(), fd, nullptr, 4, 0), -EFAULT);
  EXPECT_EQ(untorn_pwrite(img.fs(), fd, b, 0, 0), 0);
  EXPECT_EQ(untorn_pwrite(img.fs(), fd, b, sizeof b, -1), -EINVAL);
  EXPECT_EQ(untorn_pwritev2(img.fs(), fd, &iov, 1, 0, 0x10000000), -EOPNOTSUPP);
  EXPECT_EQ(untorn_pwritev2(img.fs(), fd, &iov, 1, 0, UNTORN_RWF_APPEND | UNTORN_RWF_NOAPPEND), -EINVAL);
  // statx reports no atomic write support on this image, so RWF_ATOMIC is refused, never torn.
  EXPECT_EQ(untorn_pwritev2(img.fs(), fd, &iov, 1, 0, UNTORN_RWF_ATOMIC), -EOPNOTSUPP);
  EXPECT_EQ(untorn_pwrite(img.fs(), 999, b, sizeof b, 0), -EBADF);
  EXPECT_EQ(untorn_fsync(img.fs(), 999), -EBADF);
  int dfd = untorn_open(img.fs(), "/small", 0, 0);
  EXPECT_EQ(untorn_pwrite(img.fs(), dfd, b, sizeof b, 0), -EBADF);
  EXPECT_EQ(untorn_open(img.fs(), "/small", 2, 0), -EISDIR);
}

TEST(Namespace, CreateWriteMkdirUnlinkRmdir_DebugfsAndFsckAgree) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-4k");
  const char msg[] = "created through the C API\n";
  {
    Image img(copy.path, 0);
    ASSERT_EQ(img.rc(), 0);
    ASSERT_EQ(untorn_mkdir(img.fs(), "/newdir", 0755), 0);
    EXPECT_EQ(untorn_mkdir(img.fs(), "/newdir", 0755), -EEXIST);
    int fd = untorn_open(img.fs(), "/newdir/file.txt", 2 | 0x40 | 0x80 /* O_RDWR|O_CREAT|O_EXCL */, 0644);
    ASSERT_GE(fd, 0) << untorn_strerror(fd);
    EXPECT_EQ(untorn_pwrite(img.fs(), fd, msg, sizeof msg - 1, 0), (ssize_t)(sizeof msg - 1));
    EXPECT_EQ(untorn_close(img.fs(), fd), 0);
    EXPECT_EQ(untorn_open(img.fs(), "/newdir/file.txt", 2 | 0x40 | 0x80, 0644), -EEXIST);
    EXPECT_EQ(untorn_rmdir(img.fs(), "/newdir"), -ENOTEMPTY);
    EXPECT_EQ(untorn_unlink(img.fs(), "/newdir"), -EISDIR);
    EXPECT_EQ(untorn_unlink(img.fs(), "/nope"), -ENOENT);
    EXPECT_EQ(untorn_mkdir(img.fs(), nullptr, 0755), -EFAULT);
    for (int i = 0; i < 300; i++) {  // many names in the htree directory: leaves split
      std::string p = "/bigdir/c-api-" + std::to_string(i);
      int f = untorn_open(img.fs(), p.c_str(), 1 | 0x40 | 0x80, 0600);
      ASSERT_GE(f, 0) << p << ": " << untorn_strerror(f);
      untorn_close(img.fs(), f);
      if (i % 3 == 0) {
        ASSERT_EQ(untorn_unlink(img.fs(), p.c_str()), 0);
      }
    }
    ASSERT_EQ(untorn_link(img.fs(), "/newdir/file.txt", "/hardlink"), 0);
    EXPECT_EQ(untorn_link(img.fs(), "/newdir", "/dirlink"), -EPERM);
    ASSERT_EQ(untorn_symlink(img.fs(), "newdir/file.txt", "/symlink"), 0);
    char target[64];
    EXPECT_EQ(untorn_readlink(img.fs(), "/symlink", target, sizeof target), 15);
    ASSERT_EQ(untorn_rename(img.fs(), "/hardlink", "/renamed"), 0);
    ASSERT_EQ(untorn_mkdir(img.fs(), "/newdir/sub", 0755), 0);
    EXPECT_EQ(untorn_rename(img.fs(), "/newdir", "/newdir/sub/inside"), -EINVAL);
    ASSERT_EQ(untorn_rename(img.fs(), "/newdir/sub", "/moved-sub"), 0);
    EXPECT_EQ(untorn_sync(img.fs()), 0);
    struct untorn_statx ls;
    ASSERT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, "/renamed", 0, UNTORN_STATX_BASIC_STATS, &ls), 0);
    EXPECT_EQ(ls.stx_nlink, 2u);
    ASSERT_EQ(untorn_mkdir(img.fs(), "/gone", 0700), 0);
    EXPECT_EQ(untorn_rmdir(img.fs(), "/gone"), 0);
    struct untorn_statx stx;
    EXPECT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, "/gone", 0, UNTORN_STATX_BASIC_STATS, &stx), -ENOENT);
    EXPECT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, "/newdir", 0, UNTORN_STATX_BASIC_STATS, &stx), 0);
    EXPECT_EQ(stx.stx_mode, 040755u);
    EXPECT_EQ(stx.stx_nlink, 2u);
  }
  std::string out;
  EXPECT_EQ(run("e2fsck -fn " + shell_quote(copy.path), &out), 0) << out;
  auto got = debugfs_dump(copy.path, "/newdir/file.txt");
  EXPECT_EQ(std::string(got.begin(), got.end()), std::string(msg));
  got = debugfs_dump(copy.path, "/renamed");
  EXPECT_EQ(std::string(got.begin(), got.end()), std::string(msg));
  run("debugfs -R " + shell_quote("stat /moved-sub") + " " + shell_quote(copy.path), &out);
  EXPECT_NE(out.find("Type: directory"), std::string::npos) << out;
  run("debugfs -R " + shell_quote("ls /bigdir") + " " + shell_quote(copy.path), &out);
  EXPECT_NE(out.find("c-api-1 "), std::string::npos);
  EXPECT_EQ(out.find("c-api-3 "), std::string::npos);
}

// untorn_alloc_aligned on a 1 KiB-block image (groups start one block off): every 16 KiB unit's
// physical address, as untorn_fiemap reports it and as debugfs's extent dump shows it, is a
// multiple of 16 KiB.
TEST(AlignedAllocation, UnitsPhysicallyAligned_FiemapAndDebugfsAgree) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-1k");
  const unsigned align = 16384, units = 12;
  std::vector<struct untorn_extent> ext(64);
  unsigned n = 0;
  {
    Image img(copy.path, 0);
    ASSERT_EQ(img.rc(), 0);
    int fd = untorn_open(img.fs(), "/atomic.db", 2 | 0x40, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(untorn_alloc_aligned(img.fs(), fd, 0, (int64_t)align * units, align, 0), 0);
    EXPECT_EQ(untorn_alloc_aligned(img.fs(), fd, 0, align, 3000, 0), -EINVAL);
    EXPECT_EQ(untorn_alloc_aligned(img.fs(), fd, 1024, align, align, 0), -EINVAL);
    ASSERT_EQ(untorn_fiemap(img.fs(), fd, 0, (int64_t)align * units, ext.data(), (unsigned)ext.size(), &n), 0);
    ASSERT_GT(n, 0u);
    uint64_t covered = 0;
    for (unsigned i = 0; i < n && i < ext.size(); i++) {
      EXPECT_TRUE(ext[i].fe_flags & UNTORN_EXTENT_UNWRITTEN);
      EXPECT_EQ(ext[i].fe_physical % align, 0u) << "extent " << i;
      EXPECT_EQ(ext[i].fe_logical % align, 0u);
      covered += ext[i].fe_length;
    }
    EXPECT_EQ(covered, (uint64_t)align * units);
    EXPECT_TRUE(ext[n - 1].fe_flags & UNTORN_EXTENT_LAST);
    EXPECT_EQ(untorn_ftruncate(img.fs(), fd, 5000), 0);
    EXPECT_EQ(untorn_fallocate(img.fs(), fd, UNTORN_FALLOC_PUNCH_HOLE | UNTORN_FALLOC_KEEP_SIZE, 0, 1024), 0);
    EXPECT_EQ(untorn_fallocate(img.fs(), fd, UNTORN_FALLOC_PUNCH_HOLE, 0, 1024), -EINVAL);
    EXPECT_EQ(untorn_fiemap(img.fs(), fd, 0, 1, nullptr, 0, nullptr), -EFAULT);
  }
  std::string out;
  EXPECT_EQ(run("e2fsck -fn " + shell_quote(copy.path), &out), 0) << out;
  // debugfs's own view of the unit that survived the truncate
  ASSERT_EQ(run("debugfs -R " + shell_quote("bmap /atomic.db 4") + " " + shell_quote(copy.path) + " 2>/dev/null", &out), 0);
  std::istringstream lines(out);
  std::string line, last;
  while (std::getline(lines, line))
    if (!line.empty() && line.find("debugfs") == std::string::npos) last = line;
  ASSERT_FALSE(last.empty()) << out;
  EXPECT_EQ(std::stoull(last) * 1024 % align, 4096u) << "file block 4 sits 4 KiB into its 16 KiB unit";
}

INSTANTIATE_TEST_SUITE_P(Configs, Write, ::testing::Values("ext4-4k", "ext4-1k", "ext4-no64-nocsum", "ext4-metabg", "ext4-bigalloc"),
                         [](const auto &info) { std::string s = info.param; std::replace(s.begin(), s.end(), '-', '_'); return s; });

// A real process killed with SIGKILL at random moments while it appends and fsyncs through
// libuntorn: reopening recovers the journal; every byte acknowledged by an fsync is there, every
// byte the file shows is the one written at that offset, and e2fsck -fn is clean.
TEST(CrashKill, ChildKilledWhileAppending_FsyncedBytesSurviveAndFsckClean) {
  UNTORN_REQUIRE_IMAGES();
  const char *prog = std::getenv("UNTORN_KILL_WORKLOAD");
  if (!prog || !*prog) prog = UNTORN_KILL_WORKLOAD_PATH;
  if (access(prog, X_OK) != 0) GTEST_SKIP() << prog << " (c-tests' kill_workload) is not built";
  std::mt19937 rng(7);
  long long total_durable = 0;
  for (int round = 0; round < 6; round++) {
    ImageCopy copy(round % 2 ? "ext4-1k" : "ext4-4k");
    ASSERT_FALSE(copy.path.empty());
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    pid_t pid = fork();
    if (pid == 0) {
      dup2(pipefd[1], 1);
      close(pipefd[0]);
      execl(prog, prog, copy.path.c_str(), "/empty", (char *)nullptr);
      _exit(127);
    }
    close(pipefd[1]);
    usleep(100000 + rng() % 600000);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    std::string acked;
    char c;
    while (read(pipefd[0], &c, 1) == 1) acked += c;
    close(pipefd[0]);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the workload ended on its own (status " << status << ")";
    long long durable = 0;
    std::istringstream lines(acked);
    for (std::string l; std::getline(lines, l);)
      if (!l.empty()) durable = std::stoll(l);
    total_durable += durable;

    {
      Image img(copy.path, 0);  // recovery (replay) happens here
      ASSERT_EQ(img.rc(), 0) << "round " << round << ": " << untorn_strerror(img.rc());
      struct untorn_statx stx;
      ASSERT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, "/empty", 0, UNTORN_STATX_BASIC_STATS, &stx), 0);
      EXPECT_GE((long long)stx.stx_size, durable) << "round " << round << ": fsynced bytes lost";
      int err;
      auto got = read_untorn(img.fs(), "/empty", &err);
      ASSERT_EQ(err, 0);
      for (size_t i = 0; i < got.size(); i++) {
        unsigned long long x = (unsigned long long)i * 0x9E3779B97F4A7C15ull;
        if (got[i] != (unsigned char)(x >> 56)) {
          ADD_FAILURE() << "round " << round << ": byte " << i << " of " << got.size() << " is not what was written there";
          break;
        }
      }
    }
    std::string out;
    EXPECT_EQ(run("e2fsck -fn " + shell_quote(copy.path), &out), 0) << "round " << round << ":\n" << out;
  }
  EXPECT_GT(total_durable, 0) << "no fsync returned before the kills: the test checked nothing";
  RecordProperty("acknowledged_bytes", std::to_string(total_durable));
}
