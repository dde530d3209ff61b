// untorn_statx against debugfs's view of the same inode (e2fsprogs reads the inode itself): number,
// type, mode, links, owner, size, 512-byte block count and all four timestamps with nanoseconds and
// the extra epoch bits; plus the mask's honesty about btime, DIO alignment and atomic writes.
#include "support.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <regex>

using namespace untorn_test;

namespace {

struct DebugfsTime {
  bool present = false;
  int64_t sec = 0;
  uint32_t nsec = 0;
};

struct DebugfsStat {
  uint64_t ino = 0, size = 0, blocks = 0, flags = 0;
  unsigned mode = 0, links = 0, uid = 0, gid = 0;
  std::string type;
  DebugfsTime atime, mtime, ctime, crtime;
};

// " ctime: 0x5f5e1000:12345678 -- ..." : seconds, then the extra field (epoch bits 0-1, ns << 2).
DebugfsTime parse_time(const std::string &out, const std::string &which) {
  DebugfsTime t;
  std::smatch m;
  if (!std::regex_search(out, m, std::regex("(^|\\n)\\s*" + which + ": 0x([0-9a-f]+)(:([0-9a-f]+))?"))) return t;
  t.present = true;
  uint32_t secs = (uint32_t)std::stoul(m[2].str(), nullptr, 16);
  uint32_t extra = m[4].matched ? (uint32_t)std::stoul(m[4].str(), nullptr, 16) : 0;
  t.sec = (int64_t)(int32_t)secs + ((int64_t)(extra & 3) << 32);
  t.nsec = extra >> 2;
  return t;
}

uint64_t field(const std::string &out, const std::string &re, int base = 10) {
  std::smatch m;
  EXPECT_TRUE(std::regex_search(out, m, std::regex(re))) << re << " not in:\n" << out;
  return m.size() > 1 ? std::stoull(m[1].str(), nullptr, base) : 0;
}

DebugfsStat debugfs_stat(const std::string &image, const std::string &path) {
  std::string out;
  int rc = run("debugfs -R " + shell_quote("stat \"" + path + "\"") + " " + shell_quote(image), &out);
  EXPECT_EQ(rc, 0) << out;
  DebugfsStat s;
  s.ino = field(out, "Inode: (\\d+)");
  std::smatch m;
  if (std::regex_search(out, m, std::regex("Type: (\\w+)"))) s.type = m[1].str();
  s.mode = (unsigned)field(out, "Mode:\\s+([0-7]+)", 8);
  s.uid = (unsigned)field(out, "User:\\s+(\\d+)");
  s.gid = (unsigned)field(out, "Group:\\s+(\\d+)");
  s.size = field(out, "Size: (\\d+)");
  s.links = (unsigned)field(out, "Links: (\\d+)");
  s.blocks = field(out, "Blockcount: (\\d+)");
  s.flags = field(out, "Flags: 0x([0-9a-f]+)", 16);
  s.atime = parse_time(out, "atime");
  s.mtime = parse_time(out, "mtime");
  s.ctime = parse_time(out, "ctime");
  s.crtime = parse_time(out, "crtime");
  return s;
}

void expect_time(const struct untorn_statx_timestamp &got, const DebugfsTime &want, const char *what, const std::string &ctx) {
  ASSERT_TRUE(want.present) << ctx << " " << what;
  EXPECT_EQ(got.tv_sec, want.sec) << ctx << " " << what;
  EXPECT_EQ(got.tv_nsec, want.nsec) << ctx << " " << what;
}

const char *kPaths[] = {"/", "/hello.txt", "/empty", "/one-byte", "/multi-mib", "/fragmented", "/sparse",
                        "/bigdir", "/deep", "/small", "/link-fast", "/link-slow", "/size-4097"};

}  // namespace

class Statx : public ::testing::TestWithParam<std::string> {};

TEST_P(Statx, SamplePaths_EqualDebugfsStat) {
  UNTORN_REQUIRE_IMAGES();
  const std::string image = image_path(GetParam());
  Image img(image);
  ASSERT_EQ(img.rc(), 0);
  for (const char *path : kPaths) {
    std::string ctx = GetParam() + " " + path;
    struct untorn_statx stx;
    memset(&stx, 0xAB, sizeof stx);
    int rc = untorn_statx(img.fs(), UNTORN_AT_ROOT, path, 0x100 /* AT_SYMLINK_NOFOLLOW */,
                          UNTORN_STATX_BASIC_STATS | UNTORN_STATX_BTIME, &stx);
    ASSERT_EQ(rc, 0) << ctx << ": " << untorn_strerror(rc);
    auto want = debugfs_stat(image, path);
    EXPECT_EQ(stx.stx_mask & UNTORN_STATX_BASIC_STATS, UNTORN_STATX_BASIC_STATS) << ctx;
    EXPECT_EQ(stx.stx_ino, want.ino) << ctx;
    EXPECT_EQ(stx.stx_mode & 07777, want.mode) << ctx;
    unsigned type = stx.stx_mode & S_IFMT;
    EXPECT_EQ(type, want.type == "regular" ? S_IFREG : want.type == "directory" ? S_IFDIR : want.type == "symlink" ? S_IFLNK : 0u) << ctx;
    EXPECT_EQ(stx.stx_nlink, want.links) << ctx;
    EXPECT_EQ(stx.stx_uid, want.uid) << ctx;
    EXPECT_EQ(stx.stx_gid, want.gid) << ctx;
    EXPECT_EQ(stx.stx_size, want.size) << ctx;
    // i_blocks, plus the size in sectors for regular inline-data files (ext4_file_getattr's rule for EXT4_INLINE_DATA_FL).
    uint64_t inline_sectors = (want.flags & 0x10000000) && want.type == "regular" ? (want.size + 511) >> 9 : 0;
    EXPECT_EQ(stx.stx_blocks, want.blocks + inline_sectors) << ctx;
    expect_time(stx.stx_atime, want.atime, "atime", ctx);
    expect_time(stx.stx_mtime, want.mtime, "mtime", ctx);
    expect_time(stx.stx_ctime, want.ctime, "ctime", ctx);
    // btime only where the inode has i_crtime (not with 128-byte inodes), and then exactly it.
    EXPECT_EQ((stx.stx_mask & UNTORN_STATX_BTIME) != 0, want.crtime.present) << ctx;
    if (want.crtime.present) expect_time(stx.stx_btime, want.crtime, "crtime", ctx);
    EXPECT_GT(stx.stx_blksize, 0u) << ctx;
  }
}

TEST_P(Statx, Fstatx_EmptyPathOnDescriptor_EqualsPathStatx) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0);
  int fd = untorn_open(img.fs(), "/multi-mib", 0, 0);
  ASSERT_GE(fd, 0);
  struct untorn_statx a, b;
  ASSERT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, "/multi-mib", 0, UNTORN_STATX_BASIC_STATS, &a), 0);
  ASSERT_EQ(untorn_statx(img.fs(), fd, "", 0x1000 /* AT_EMPTY_PATH */, UNTORN_STATX_BASIC_STATS, &b), 0);
  EXPECT_EQ(a.stx_ino, b.stx_ino);
  EXPECT_EQ(a.stx_size, b.stx_size);
  // A relative path resolves from a directory descriptor, like statx(dirfd, ...).
  int dfd = untorn_open(img.fs(), "/small", 0x10000, 0);
  ASSERT_GE(dfd, 0);
  struct untorn_statx c;
  EXPECT_EQ(untorn_statx(img.fs(), dfd, "..", 0, UNTORN_STATX_BASIC_STATS, &c), 0);
  EXPECT_EQ(c.stx_ino, 2u);
  EXPECT_EQ(untorn_statx(img.fs(), fd, "", 0, UNTORN_STATX_BASIC_STATS, &c), -ENOENT);
  untorn_close(img.fs(), fd);
  untorn_close(img.fs(), dfd);
}

TEST_P(Statx, RegularFile_DioAlignAndAtomicMaskHonest) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0);
  struct untorn_statx stx;
  ASSERT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, "/multi-mib", 0,
                         UNTORN_STATX_BASIC_STATS | UNTORN_STATX_DIOALIGN | UNTORN_STATX_WRITE_ATOMIC, &stx), 0);
  EXPECT_TRUE(stx.stx_mask & UNTORN_STATX_DIOALIGN);
  EXPECT_EQ(stx.stx_dio_mem_align, 512u);
  EXPECT_EQ(stx.stx_dio_offset_align, 512u);
  // Opened read-only, on a device without atomic writes: the mask bit and the attribute's mask
  // bit are set, the attribute and every limit are 0 (what Linux reports on such ext4).
  EXPECT_TRUE(stx.stx_mask & UNTORN_STATX_WRITE_ATOMIC);
  EXPECT_TRUE(stx.stx_attributes_mask & UNTORN_STATX_ATTR_WRITE_ATOMIC);
  EXPECT_FALSE(stx.stx_attributes & UNTORN_STATX_ATTR_WRITE_ATOMIC);
  EXPECT_EQ(stx.stx_atomic_write_unit_min, 0u);
  EXPECT_EQ(stx.stx_atomic_write_unit_max, 0u);
  EXPECT_EQ(stx.stx_atomic_write_segments_max, 0u);
  // A directory gets neither DIO alignment nor atomic limits.
  ASSERT_EQ(untorn_statx(img.fs(), UNTORN_AT_ROOT, "/small", 0, UNTORN_STATX_DIOALIGN, &stx), 0);
  EXPECT_FALSE(stx.stx_mask & UNTORN_STATX_DIOALIGN);
}

INSTANTIATE_TEST_SUITE_P(Configs, Statx, ::testing::ValuesIn(kConfigs),
                         [](const auto &info) { std::string s = info.param; std::replace(s.begin(), s.end(), '-', '_'); return s; });
