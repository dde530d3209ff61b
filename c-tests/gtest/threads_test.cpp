// One image handle, many threads: concurrent reads of the same and different files and concurrent
// open/close all give the host tree's bytes.
#include "support.hpp"

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>

using namespace untorn_test;
namespace fs = std::filesystem;

TEST(Threads, ManyReadersOneHandle_BytesEqualHost) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path("ext4-1k"));
  ASSERT_EQ(img.rc(), 0);
  auto defects = mkfs_defects("ext4-1k");
  std::vector<std::string> files;
  for (auto &e : fs::recursive_directory_iterator(tree_dir()))
    if (!e.is_symlink() && e.is_regular_file()) {
      std::string rel = "/" + e.path().lexically_relative(tree_dir()).generic_string();
      if (!defects.count(rel)) files.push_back(rel);
    }
  ASSERT_GT(files.size(), 20u);
  std::vector<std::vector<unsigned char>> want;
  for (auto &f : files) want.push_back(read_host(tree_dir() + f));

  std::atomic<int> failures{0}, reads{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++)
    threads.emplace_back([&, t] {
      for (size_t k = 0; k < files.size() * 2; k++) {
        // half the threads walk the files in order (same files at once), half start elsewhere
        size_t i = t % 2 ? k % files.size() : (k * 7 + (size_t)t) % files.size();
        int err;
        auto got = read_untorn(img.fs(), files[i], &err);
        if (err != 0 || got != want[i]) failures++;
        reads++;
      }
    });
  for (auto &th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(reads.load(), (int)(8 * files.size() * 2));
}

TEST(Threads, ConcurrentOpenClose_DescriptorsStayDistinct) {
  UNTORN_REQUIRE_IMAGES();
  Image img(image_path("ext4-4k"));
  ASSERT_EQ(img.rc(), 0);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++)
    threads.emplace_back([&] {
      for (int k = 0; k < 2000; k++) {
        int fd = untorn_open(img.fs(), "/hello.txt", 0, 0);
        char buf[32];
        if (fd < 0 || untorn_pread(img.fs(), fd, buf, sizeof buf, 0) != 14 || memcmp(buf, "hello, untorn\n", 14) != 0)
          failures++;
        if (fd >= 0 && untorn_close(img.fs(), fd) != 0) failures++;
      }
    });
  for (auto &th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}
