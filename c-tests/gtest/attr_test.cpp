// untorn_utimensat, untorn_fchmodat, untorn_fchownat and untorn_fs_info through the C ABI:
// results judged by debugfs stat, dumpe2fs -h and e2fsck -fn; the errno contract of each call.
#include "support.hpp"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <regex>

using namespace untorn_test;

namespace {
constexpr int kAtSymlinkNoFollow = 0x100, kAtEmptyPath = 0x1000;

std::string debugfs_stat(const std::string &image, const std::string &path) {
  std::string out;
  run("debugfs -R " + shell_quote("stat " + path) + " " + shell_quote(image), &out);
  return out;
}

// A time as debugfs prints its raw words ("atime: 0xSSSSSSSS:XXXXXXXX"), decoded by the ext4
// format's rule: signed 32-bit seconds plus (extra & 3) << 32; nanoseconds = extra >> 2.
std::pair<int64_t, int64_t> debugfs_time(const std::string &stat, const std::string &name) {
  std::smatch m;
  std::regex re("\\b" + name + ": 0x([0-9a-f]{8})(?::([0-9a-f]{8}))?");
  if (!std::regex_search(stat, m, re)) return {INT64_MIN, -1};
  int32_t lo = (int32_t)std::stoul(m[1].str(), nullptr, 16);
  uint32_t extra = m[2].matched ? (uint32_t)std::stoul(m[2].str(), nullptr, 16) : 0;
  return {lo + ((int64_t)(extra & 3) << 32), extra >> 2};
}

long debugfs_number(const std::string &stat, const std::string &label, int base = 10) {
  std::smatch m;
  if (!std::regex_search(stat, m, std::regex(label + ":\\s+([0-9]+)"))) return -1;
  return std::stol(m[1].str(), nullptr, base);
}

std::string dumpe2fs_field(const std::string &text, const std::string &name) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("(^|\\n)" + name + ":\\s+([^\\n]*?)\\s*(\\n|$)"))) return "<missing>";
  return m[2].str();
}

void expect_fsck_clean(const std::string &image) {
  std::string out;
  EXPECT_EQ(run("e2fsck -fn " + shell_quote(image), &out), 0) << out;
}
}  // namespace

TEST(Attr, UtimensatNanosecondsAndEpochBits_DebugfsShowsThem) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-4k");
  ASSERT_FALSE(copy.path.empty());
  int64_t start = (int64_t)time(nullptr);
  {
    Image img(copy.path, 0);
    ASSERT_EQ(img.rc(), 0) << untorn_strerror(img.rc());
    struct untorn_timespec ts[2] = {{4102444800, 123456789}, {-5, 999999999}};  // 2100 and before 1970
    ASSERT_EQ(untorn_utimensat(img.fs(), UNTORN_AT_ROOT, "/hello.txt", ts, 0), 0);
    struct untorn_timespec only_m[2] = {{0, UNTORN_UTIME_OMIT}, {8589934592, 5}};
    ASSERT_EQ(untorn_utimensat(img.fs(), UNTORN_AT_ROOT, "/empty", only_m, 0), 0);
  }
  auto st = debugfs_stat(copy.path, "/hello.txt");
  EXPECT_EQ(debugfs_time(st, "atime"), std::make_pair((int64_t)4102444800, (int64_t)123456789)) << st;
  EXPECT_EQ(debugfs_time(st, "mtime"), std::make_pair((int64_t)-5, (int64_t)999999999)) << st;
  EXPECT_GE(debugfs_time(st, "ctime").first, start);
  auto before = debugfs_stat(image_path("ext4-4k"), "/empty");
  auto empty = debugfs_stat(copy.path, "/empty");
  EXPECT_EQ(debugfs_time(empty, "mtime"), std::make_pair((int64_t)8589934592, (int64_t)5)) << empty;
  EXPECT_EQ(debugfs_time(empty, "atime"), debugfs_time(before, "atime"));
  expect_fsck_clean(copy.path);
}

TEST(Attr, UtimensatErrnoContract) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-4k");
  ASSERT_FALSE(copy.path.empty());
  struct untorn_timespec omit[2] = {{1, UNTORN_UTIME_OMIT}, {2, UNTORN_UTIME_OMIT}};
  struct untorn_timespec big[2] = {{1, 1000000000}, {2, UNTORN_UTIME_OMIT}};
  struct untorn_timespec neg[2] = {{1, UNTORN_UTIME_NOW}, {2, -1}};
  {
    Image img(copy.path, 0);
    ASSERT_EQ(img.rc(), 0);
    struct untorn_fs *fs = img.fs();
    // both omitted: nothing to do, the path is not even looked up
    EXPECT_EQ(untorn_utimensat(fs, UNTORN_AT_ROOT, "/no/such", omit, 0), 0);
    EXPECT_EQ(untorn_utimensat(fs, UNTORN_AT_ROOT, "/hello.txt", big, 0), -EINVAL);
    EXPECT_EQ(untorn_utimensat(fs, UNTORN_AT_ROOT, "/hello.txt", neg, 0), -EINVAL);
    EXPECT_EQ(untorn_utimensat(fs, UNTORN_AT_ROOT, "/hello.txt", nullptr, 0x4), -EINVAL);
    EXPECT_EQ(untorn_utimensat(fs, UNTORN_AT_ROOT, "/missing", nullptr, 0), -ENOENT);
    EXPECT_EQ(untorn_utimensat(fs, UNTORN_AT_ROOT, nullptr, nullptr, 0), -EFAULT);
    EXPECT_EQ(untorn_utimensat(fs, 999, "relative", nullptr, 0), -EBADF);
    EXPECT_EQ(untorn_utimensat(fs, 999, nullptr, nullptr, 0), -EBADF);
    EXPECT_EQ(untorn_utimensat(nullptr, UNTORN_AT_ROOT, "/hello.txt", nullptr, 0), -EFAULT);
    EXPECT_EQ(untorn_utimensat((struct untorn_fs *)0x1000, UNTORN_AT_ROOT, "/hello.txt", nullptr, 0), -EBADF);
    int fd = untorn_open(fs, "/hello.txt", 0, 0);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(untorn_utimensat(fs, fd, nullptr, nullptr, kAtEmptyPath), -EINVAL);  // futimens takes no flags
    struct untorn_timespec at[2] = {{1000, 1}, {2000, 2}};
    EXPECT_EQ(untorn_utimensat(fs, fd, nullptr, at, 0), 0);  // futimens on a read-only descriptor
    int pfd = untorn_open(fs, "/hello.txt", 010000000 /* O_PATH */, 0);
    ASSERT_GE(pfd, 0);
    EXPECT_EQ(untorn_utimensat(fs, pfd, nullptr, nullptr, 0), -EBADF);
    EXPECT_EQ(untorn_utimensat(fs, pfd, "", at, 0), -ENOENT);
    EXPECT_EQ(untorn_utimensat(fs, pfd, "", at, kAtEmptyPath), 0);
  }
  auto st = debugfs_stat(copy.path, "/hello.txt");
  EXPECT_EQ(debugfs_time(st, "atime"), std::make_pair((int64_t)1000, (int64_t)1));
  EXPECT_EQ(debugfs_time(st, "mtime"), std::make_pair((int64_t)2000, (int64_t)2));
  Image ro(copy.path);
  ASSERT_EQ(ro.rc(), 0);
  EXPECT_EQ(untorn_utimensat(ro.fs(), UNTORN_AT_ROOT, "/hello.txt", omit, 0), 0);
  EXPECT_EQ(untorn_utimensat(ro.fs(), UNTORN_AT_ROOT, "/hello.txt", nullptr, 0), -EROFS);
  EXPECT_EQ(untorn_utimensat(ro.fs(), UNTORN_AT_ROOT, "/missing", nullptr, 0), -ENOENT);
}

TEST(Attr, FchmodatFchownat_DebugfsShowsBitsAndIds) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-128inode");
  ASSERT_FALSE(copy.path.empty());
  {
    Image img(copy.path, 0);
    ASSERT_EQ(img.rc(), 0);
    struct untorn_fs *fs = img.fs();
    EXPECT_EQ(untorn_fchmodat(fs, UNTORN_AT_ROOT, "/hello.txt", 07751, 0), 0);
    EXPECT_EQ(untorn_fchownat(fs, UNTORN_AT_ROOT, "/empty", 70000, 80000, 0), 0);
    EXPECT_EQ(untorn_fchownat(fs, UNTORN_AT_ROOT, "/link-fast", 42, (uint32_t)-1, kAtSymlinkNoFollow), 0);
    int dfd = untorn_open(fs, "/small", 0, 0);
    ASSERT_GE(dfd, 0);
    EXPECT_EQ(untorn_fchmodat(fs, dfd, "", 01700, kAtEmptyPath), 0);
    EXPECT_EQ(untorn_fchmodat(fs, dfd, "s1", 0600, 0), 0);  // relative to the directory descriptor
    EXPECT_EQ(untorn_fchmodat(fs, UNTORN_AT_ROOT, "/link-fast", 0700, kAtSymlinkNoFollow), -EOPNOTSUPP);
    EXPECT_EQ(untorn_fchmodat(fs, UNTORN_AT_ROOT, nullptr, 0700, 0), -EFAULT);
    EXPECT_EQ(untorn_fchownat(fs, UNTORN_AT_ROOT, nullptr, 1, 1, 0), -EFAULT);
    EXPECT_EQ(untorn_fchmodat(fs, UNTORN_AT_ROOT, "/hello.txt", 0700, 0x2), -EINVAL);
    EXPECT_EQ(untorn_fchownat(fs, UNTORN_AT_ROOT, "/missing", 1, 1, 0), -ENOENT);
    EXPECT_EQ(untorn_fchownat(fs, 555, "x", 1, 1, 0), -EBADF);
  }
  auto hello = debugfs_stat(copy.path, "/hello.txt");
  EXPECT_EQ(debugfs_number(hello, "Mode", 8), 07751) << hello;
  EXPECT_NE(hello.find("Type: regular"), std::string::npos);
  auto empty = debugfs_stat(copy.path, "/empty");
  EXPECT_EQ(debugfs_number(empty, "User"), 70000);
  EXPECT_EQ(debugfs_number(empty, "Group"), 80000);
  auto link = debugfs_stat(copy.path, "/link-fast");
  EXPECT_EQ(debugfs_number(link, "User"), 42);
  EXPECT_EQ(debugfs_number(link, "Group"), debugfs_number(debugfs_stat(image_path("ext4-128inode"), "/link-fast"), "Group"));
  EXPECT_EQ(debugfs_number(debugfs_stat(copy.path, "/small"), "Mode", 8), 01700);
  EXPECT_EQ(debugfs_number(debugfs_stat(copy.path, "/small/s1"), "Mode", 8), 0600);
  expect_fsck_clean(copy.path);
  Image ro(copy.path);
  ASSERT_EQ(ro.rc(), 0);
  EXPECT_EQ(untorn_fchmodat(ro.fs(), UNTORN_AT_ROOT, "/hello.txt", 0644, 0), -EROFS);
  EXPECT_EQ(untorn_fchownat(ro.fs(), UNTORN_AT_ROOT, "/hello.txt", 0, 0, 0), -EROFS);
}

class FsInfo : public ::testing::TestWithParam<std::string> {};

TEST_P(FsInfo, MatchesDumpe2fs) {
  UNTORN_REQUIRE_IMAGES();
  std::string dump;
  ASSERT_EQ(run("dumpe2fs -h " + shell_quote(image_path(GetParam())), &dump), 0) << dump;
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0);
  struct untorn_fs_info info = {};
  info.size = sizeof(info);
  ASSERT_EQ(untorn_fs_info(img.fs(), &info), 0);
  EXPECT_EQ(info.size, sizeof(info));
  EXPECT_EQ(std::to_string(info.block_size), dumpe2fs_field(dump, "Block size"));
  std::string cluster = dump.find("Cluster size:") != std::string::npos ? "Cluster size" : "Block size";
  EXPECT_EQ(std::to_string(info.cluster_size), dumpe2fs_field(dump, cluster));
  EXPECT_EQ(std::to_string(info.blocks_count), dumpe2fs_field(dump, "Block count"));
  EXPECT_EQ(std::to_string(info.free_blocks), dumpe2fs_field(dump, "Free blocks"));
  EXPECT_EQ(std::to_string(info.reserved_blocks), dumpe2fs_field(dump, "Reserved block count"));
  EXPECT_EQ(std::to_string(info.inodes_count), dumpe2fs_field(dump, "Inode count"));
  EXPECT_EQ(std::to_string(info.free_inodes), dumpe2fs_field(dump, "Free inodes"));
  EXPECT_EQ(std::to_string(info.inode_size), dumpe2fs_field(dump, "Inode size"));
  char uuid[37];
  const uint8_t *u = info.uuid;
  snprintf(uuid, sizeof uuid, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2],
           u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  EXPECT_EQ(std::string(uuid), dumpe2fs_field(dump, "Filesystem UUID"));
  std::string features = " " + dumpe2fs_field(dump, "Filesystem features") + " ";
  bool journal = features.find(" has_journal ") != std::string::npos;
  EXPECT_EQ((info.feature_compat & 0x4) != 0, journal);
  EXPECT_EQ((info.feature_ro_compat & 0x200) != 0, features.find(" bigalloc ") != std::string::npos);
  EXPECT_EQ((info.feature_incompat & 0x80) != 0, features.find(" 64bit ") != std::string::npos);
  EXPECT_EQ((info.feature_ro_compat & 0x400) != 0, features.find(" metadata_csum ") != std::string::npos);
  EXPECT_EQ(info.flags, (journal ? UNTORN_FS_JOURNALED : 0u) | UNTORN_FS_READONLY);
  EXPECT_EQ(info.replayed_transactions, 0u);
}

INSTANTIATE_TEST_SUITE_P(Configs, FsInfo, ::testing::ValuesIn(kConfigs),
                         [](const auto &p) {
                           std::string n = p.param;
                           for (auto &c : n) if (c == '-') c = '_';
                           return n;
                         });

TEST(Attr, FsInfoSizeContractAndOpenFlags) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-4k");
  ASSERT_FALSE(copy.path.empty());
  Image img(copy.path, 0);
  ASSERT_EQ(img.rc(), 0);
  // An older caller that knows only size and flags: nothing past them is written.
  struct untorn_fs_info info;
  memset(&info, 0xAB, sizeof info);
  info.size = 8;
  ASSERT_EQ(untorn_fs_info(img.fs(), &info), 0);
  EXPECT_EQ(info.size, 8u);
  EXPECT_EQ(info.flags, UNTORN_FS_JOURNALED);
  EXPECT_EQ(info.block_size, 0xABABABABu);
  // A newer caller with a larger struct: told how much this library filled.
  unsigned char bigger[sizeof(struct untorn_fs_info) + 32];
  memset(bigger, 0, sizeof bigger);
  ((struct untorn_fs_info *)bigger)->size = sizeof bigger;
  ASSERT_EQ(untorn_fs_info(img.fs(), (struct untorn_fs_info *)bigger), 0);
  EXPECT_EQ(((struct untorn_fs_info *)bigger)->size, sizeof(struct untorn_fs_info));
  info.size = 4;
  EXPECT_EQ(untorn_fs_info(img.fs(), &info), -EINVAL);
  EXPECT_EQ(untorn_fs_info(img.fs(), nullptr), -EFAULT);
  EXPECT_EQ(untorn_fs_info(nullptr, &info), -EFAULT);

  struct untorn_open_opts opts = {sizeof(opts), UNTORN_OPEN_NOREPLAY};
  struct untorn_fs *fs = nullptr;
  EXPECT_EQ(untorn_open_image(image_path("ext4-4k").c_str(), &opts, &fs), -EINVAL);  // like noload: read-only only
  opts.flags = UNTORN_OPEN_NOREPLAY | UNTORN_OPEN_RDONLY;
  ASSERT_EQ(untorn_open_image(image_path("ext4-4k").c_str(), &opts, &fs), 0);
  struct untorn_fs_info clean = {};
  clean.size = sizeof clean;
  EXPECT_EQ(untorn_fs_info(fs, &clean), 0);
  EXPECT_EQ(clean.flags, UNTORN_FS_JOURNALED | UNTORN_FS_READONLY);  // a clean journal: nothing left unreplayed
  untorn_close_image(fs);
}

// A journal left needing recovery by debugfs (jo; jw; jc writes one committed transaction that
// puts a block of random bytes at the last block, which no file uses).
TEST(Attr, FsInfoReplayFlags_DirtyJournalFromDebugfs) {
  UNTORN_REQUIRE_IMAGES();
  ImageCopy copy("ext4-4k");
  ASSERT_FALSE(copy.path.empty());
  std::string dump, out;
  ASSERT_EQ(run("dumpe2fs -h " + shell_quote(copy.path), &dump), 0);
  unsigned long last = std::stoul(dumpe2fs_field(dump, "Block count")) - 1;
  std::string block = copy.path + ".blk", cmds = copy.path + ".cmds";
  ASSERT_EQ(run("head -c 4096 /dev/urandom > " + shell_quote(block), &out), 0);
  {
    std::ofstream f(cmds);
    f << "jo\njw -b " << last << " " << block << "\njc\n";
  }
  ASSERT_EQ(run("debugfs -w -f " + shell_quote(cmds) + " " + shell_quote(copy.path), &out), 0) << out;
  std::string log;
  run("debugfs -R logdump " + shell_quote(copy.path), &log);
  unsigned commits = 0;
  for (size_t at = 0; (at = log.find("(commit block)", at)) != std::string::npos; at++) commits++;
  ASSERT_GE(commits, 1u) << log;

  struct untorn_open_opts opts = {sizeof(opts), UNTORN_OPEN_RDONLY | UNTORN_OPEN_NOREPLAY};
  struct untorn_fs *fs = nullptr;
  struct untorn_fs_info info = {};
  ASSERT_EQ(untorn_open_image(copy.path.c_str(), &opts, &fs), 0);
  info.size = sizeof info;
  EXPECT_EQ(untorn_fs_info(fs, &info), 0);
  EXPECT_EQ(info.flags, UNTORN_FS_JOURNALED | UNTORN_FS_READONLY | UNTORN_FS_NOT_REPLAYED);
  EXPECT_NE(info.feature_incompat & 0x4u, 0u);  // needs_recovery
  EXPECT_EQ(info.replayed_transactions, 0u);
  untorn_close_image(fs);

  opts.flags = UNTORN_OPEN_RDONLY;  // replayed into memory
  ASSERT_EQ(untorn_open_image(copy.path.c_str(), &opts, &fs), 0);
  info.size = sizeof info;
  EXPECT_EQ(untorn_fs_info(fs, &info), 0);
  EXPECT_EQ(info.flags, UNTORN_FS_JOURNALED | UNTORN_FS_READONLY | UNTORN_FS_REPLAYED);
  EXPECT_EQ(info.replayed_transactions, commits);
  untorn_close_image(fs);

  ASSERT_EQ(untorn_open_image(copy.path.c_str(), nullptr, &fs), 0);  // replayed into the image
  info.size = sizeof info;
  EXPECT_EQ(untorn_fs_info(fs, &info), 0);
  EXPECT_EQ(info.flags, UNTORN_FS_JOURNALED | UNTORN_FS_REPLAYED);
  EXPECT_EQ(info.feature_incompat & 0x4u, 0u);
  untorn_close_image(fs);
  ASSERT_EQ(run("dumpe2fs -h " + shell_quote(copy.path), &dump), 0);
  EXPECT_EQ(dumpe2fs_field(dump, "Filesystem features").find("needs_recovery"), std::string::npos);
  EXPECT_EQ(run("cmp -n 4096 -i " + std::to_string(last * 4096) + ":0 " + shell_quote(copy.path) + " " + shell_quote(block), &out), 0) << out;
  expect_fsck_clean(copy.path);
  unlink(block.c_str());
  unlink(cmds.c_str());
}
