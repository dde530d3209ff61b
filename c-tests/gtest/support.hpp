// Shared helpers of the GoogleTest suites: the fixture images, the host tree they were made from,
// running the e2fsprogs oracles, and RAII over the C API.
#pragma once

#include <gtest/gtest.h>
#include <untorn.h>

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace untorn_test {

// The configs make-test-images.sh builds; configs.txt must list exactly these.
inline const std::vector<std::string> kConfigs = {
    "ext4-4k", "ext4-1k", "ext4-no64-nocsum", "ext4-bigalloc",
    "ext3", "ext4-inline", "ext4-128inode", "ext4-metabg"};

// UNTORN_TEST_IMAGES (set by CTest from the test_images fixture), or empty.
inline std::string images_dir() {
  const char *d = std::getenv("UNTORN_TEST_IMAGES");
  return d && *d ? d : "";
}

#define UNTORN_REQUIRE_IMAGES()                                                       \
  do {                                                                                \
    if (untorn_test::images_dir().empty())                                            \
      GTEST_SKIP() << "UNTORN_TEST_IMAGES is not set (run through ctest, which makes " \
                      "the images with c-tests/fixtures/make-test-images.sh)";        \
  } while (0)

inline std::string image_path(const std::string &config) { return images_dir() + "/" + config + ".img"; }
inline std::string tree_dir() { return images_dir() + "/tree"; }

// Paths (relative to the tree, with a leading '/') that mke2fs copied wrongly into this config.
inline std::set<std::string> mkfs_defects(const std::string &config) {
  std::set<std::string> out;
  std::ifstream f(images_dir() + "/" + config + ".mke2fs-defects");
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) out.insert(line);
  return out;
}

// Runs a shell command (e2fsprogs are looked up in /sbin too); returns exit status and output.
inline int run(const std::string &cmd, std::string *output) {
  std::string full = "PATH=\"$PATH:/sbin:/usr/sbin\" " + cmd + " 2>&1";
  FILE *p = popen(full.c_str(), "r");
  if (!p) return -1;
  std::string out;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

inline std::string shell_quote(const std::string &s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline std::vector<unsigned char> read_host(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A private copy of a config's image (sparse), deleted at scope exit; path is empty on failure.
struct ImageCopy {
  std::string path;
  explicit ImageCopy(const std::string &config) {
    char tmpl[] = "/tmp/untorn-copy-XXXXXX";
    int fd = mkstemp(tmpl);
    close(fd);
    path = tmpl;
    std::string out;
    if (run("cp --sparse=always " + shell_quote(image_path(config)) + " " + shell_quote(path), &out) != 0) path.clear();
  }
  ~ImageCopy() {
    if (!path.empty()) unlink(path.c_str());
  }
};

// An image opened through the C API, closed at scope exit.
class Image {
 public:
  explicit Image(const std::string &path, unsigned flags = UNTORN_OPEN_RDONLY) {
    struct untorn_open_opts opts = {sizeof(opts), flags};
    rc_ = untorn_open_image(path.c_str(), &opts, &fs_);
  }
  ~Image() {
    if (rc_ == 0) untorn_close_image(fs_);
  }
  Image(const Image &) = delete;
  Image &operator=(const Image &) = delete;
  int rc() const { return rc_; }
  struct untorn_fs *fs() const { return fs_; }

 private:
  struct untorn_fs *fs_ = nullptr;
  int rc_;
};

// Reads a whole file through untorn_pread in odd-sized chunks; on error returns the -errno in *err.
inline std::vector<unsigned char> read_untorn(struct untorn_fs *fs, const std::string &path, int *err) {
  std::vector<unsigned char> out;
  *err = 0;
  int fd = untorn_open(fs, path.c_str(), 0, 0);
  if (fd < 0) {
    *err = fd;
    return out;
  }
  static const size_t chunks[] = {1, 7, 4096, 65537, 3, 1 << 20};
  size_t i = 0;
  std::vector<unsigned char> buf(1 << 20);
  for (;;) {
    size_t want = chunks[i++ % (sizeof chunks / sizeof *chunks)];
    ssize_t n = untorn_pread(fs, fd, buf.data(), want, (int64_t)out.size());
    if (n < 0) {
      *err = (int)n;
      break;
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  untorn_close(fs, fd);
  return out;
}

}  // namespace untorn_test
