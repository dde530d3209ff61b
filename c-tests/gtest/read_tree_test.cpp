// Every file, directory and symlink of the generated tree, read back through the C API from every
// config's image, equals the host tree mke2fs -d copied from.
#include "support.hpp"

#include <dirent.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

namespace fs = std::filesystem;
using namespace untorn_test;

class ReadTree : public ::testing::TestWithParam<std::string> {};

// lexically: fs::relative would resolve symlinks (and fail on the tree's loops).
static std::string rel(const fs::path &p) { return "/" + p.lexically_relative(tree_dir()).generic_string(); }

TEST(Fixture, ConfigsTxtListsEveryConfig) {
  UNTORN_REQUIRE_IMAGES();
  std::ifstream f(images_dir() + "/configs.txt");
  std::vector<std::string> listed;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) listed.push_back(line);
  EXPECT_EQ(listed, kConfigs);
}

TEST_P(ReadTree, RegularFiles_BytesEqualHostTree) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0) << untorn_strerror(img.rc());
  auto defects = mkfs_defects(GetParam());
  int files = 0;
  for (auto &e : fs::recursive_directory_iterator(tree_dir())) {
    if (e.is_symlink() || !e.is_regular_file()) continue;
    std::string path = rel(e.path());
    if (defects.count(path)) continue;
    int err;
    auto got = read_untorn(img.fs(), path, &err);
    ASSERT_EQ(err, 0) << GetParam() << " " << path << ": " << untorn_strerror(err);
    auto want = read_host(e.path());
    ASSERT_EQ(got.size(), want.size()) << GetParam() << " " << path;
    ASSERT_TRUE(got == want) << GetParam() << " " << path << ": bytes differ";
    files++;
  }
  EXPECT_GT(files, 30);
}

TEST_P(ReadTree, Preadv2_ThreeIovecsAtOffsets_EqualHostBytes) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0);
  auto defects = mkfs_defects(GetParam());
  for (const char *name : {"/multi-mib", "/fragmented", "/random-size", "/size-4097", "/sparse"}) {
    if (defects.count(name)) continue;
    auto want = read_host(tree_dir() + name);
    int fd = untorn_open(img.fs(), name, 0, 0);
    ASSERT_GE(fd, 0) << name << ": " << untorn_strerror(fd);
    for (size_t off : {size_t(0), size_t(1), size_t(4095), want.size() / 2, want.size() > 10 ? want.size() - 10 : 0}) {
      std::vector<unsigned char> a(13), b(4096), c(70001);
      struct iovec iov[3] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
      ssize_t n = untorn_preadv2(img.fs(), fd, iov, 3, (int64_t)off, 0);
      size_t expect = off >= want.size() ? 0 : std::min(want.size() - off, a.size() + b.size() + c.size());
      ASSERT_EQ(n, (ssize_t)expect) << name << " at " << off;
      std::vector<unsigned char> got(a);
      got.insert(got.end(), b.begin(), b.end());
      got.insert(got.end(), c.begin(), c.end());
      ASSERT_TRUE(std::equal(want.begin() + off, want.begin() + off + expect, got.begin())) << name << " at " << off;
    }
    untorn_close(img.fs(), fd);
  }
}

static unsigned char host_dtype(const fs::directory_entry &e) {
  auto s = e.symlink_status().type();
  if (s == fs::file_type::directory) return DT_DIR;
  if (s == fs::file_type::symlink) return DT_LNK;
  if (s == fs::file_type::regular) return DT_REG;
  return DT_UNKNOWN;
}

TEST_P(ReadTree, Readdir_EveryDirectory_EqualsHostListing) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0);
  std::vector<fs::path> dirs = {tree_dir()};
  for (auto &e : fs::recursive_directory_iterator(tree_dir()))
    if (!e.is_symlink() && e.is_directory()) dirs.push_back(e.path());
  for (auto &d : dirs) {
    std::string path = d == fs::path(tree_dir()) ? "/" : rel(d);
    std::map<std::string, unsigned char> want = {{".", DT_DIR}, {"..", DT_DIR}};
    for (auto &e : fs::directory_iterator(d)) want[e.path().filename().string()] = host_dtype(e);
    if (path == "/") want["lost+found"] = DT_DIR;
    int fd = untorn_open(img.fs(), path.c_str(), 0x10000 /* O_DIRECTORY */, 0);
    ASSERT_GE(fd, 0) << path << ": " << untorn_strerror(fd);
    std::map<std::string, unsigned char> got;
    std::vector<struct untorn_dirent> ents(97);
    for (int n; (n = untorn_readdir(img.fs(), fd, ents.data(), (unsigned)ents.size())) != 0;) {
      ASSERT_GT(n, 0) << path << ": " << untorn_strerror(n);
      for (int i = 0; i < n; i++) {
        ASSERT_EQ(strlen(ents[i].d_name), ents[i].d_namelen);
        ASSERT_TRUE(got.emplace(ents[i].d_name, ents[i].d_type).second) << path << ": duplicate " << ents[i].d_name;
      }
    }
    untorn_close(img.fs(), fd);
    ASSERT_EQ(got, want) << GetParam() << " " << path;
  }
}

TEST_P(ReadTree, Readlink_EverySymlink_EqualsHostTarget) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path(GetParam()));
  ASSERT_EQ(img.rc(), 0);
  int links = 0;
  for (auto &e : fs::recursive_directory_iterator(tree_dir())) {
    if (!e.is_symlink()) continue;
    std::string want = fs::read_symlink(e.path()).string();
    char buf[4097];
    ssize_t n = untorn_readlink(img.fs(), rel(e.path()).c_str(), buf, sizeof buf);
    ASSERT_GE(n, 0) << rel(e.path()) << ": " << untorn_strerror((int)n);
    EXPECT_EQ(std::string(buf, (size_t)n), want) << rel(e.path());
    links++;
  }
  EXPECT_GE(links, 6);
  // A loop resolves to ELOOP, as the kernel's 40-link limit does.
  int fd = untorn_open(img.fs(), "/loop-a", 0, 0);
  EXPECT_EQ(fd, -ELOOP);
}

INSTANTIATE_TEST_SUITE_P(Configs, ReadTree, ::testing::ValuesIn(kConfigs),
                         [](const auto &info) { std::string s = info.param; std::replace(s.begin(), s.end(), '-', '_'); return s; });
