using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Ext4Fs.Info (untorn_fs_info): geometry, counts, UUID, label and feature words against
/// dumpe2fs -h (before and after untorn wrote), free counts against the kernel's statfs of a
/// loop mount, and the guarantee flags for journaled, journal-less, read-only, replayed and
/// not-replayed opens.
/// </summary>
public class FsInfoTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    // e2fsprogs' feature names (lib/e2p/feature.c) and their words and bits, from the ext4 format document.
    private static readonly Dictionary<string, (int Word, uint Bit)> FeatureNames = new()
    {
        ["dir_prealloc"] = (0, 0x1), ["imagic_inodes"] = (0, 0x2), ["has_journal"] = (0, 0x4), ["ext_attr"] = (0, 0x8),
        ["resize_inode"] = (0, 0x10), ["dir_index"] = (0, 0x20), ["lazy_bg"] = (0, 0x40), ["sparse_super2"] = (0, 0x200),
        ["fast_commit"] = (0, 0x400), ["stable_inodes"] = (0, 0x800), ["orphan_file"] = (0, 0x1000),
        ["compression"] = (1, 0x1), ["filetype"] = (1, 0x2), ["needs_recovery"] = (1, 0x4), ["journal_dev"] = (1, 0x8),
        ["meta_bg"] = (1, 0x10), ["extent"] = (1, 0x40), ["64bit"] = (1, 0x80), ["mmp"] = (1, 0x100), ["flex_bg"] = (1, 0x200),
        ["ea_inode"] = (1, 0x400), ["dirdata"] = (1, 0x1000), ["metadata_csum_seed"] = (1, 0x2000), ["large_dir"] = (1, 0x4000),
        ["inline_data"] = (1, 0x8000), ["encrypt"] = (1, 0x10000), ["casefold"] = (1, 0x20000),
        ["sparse_super"] = (2, 0x1), ["large_file"] = (2, 0x2), ["huge_file"] = (2, 0x8), ["uninit_bg"] = (2, 0x10),
        ["dir_nlink"] = (2, 0x20), ["extra_isize"] = (2, 0x40), ["quota"] = (2, 0x100), ["bigalloc"] = (2, 0x200),
        ["metadata_csum"] = (2, 0x400), ["replica"] = (2, 0x800), ["read-only"] = (2, 0x1000), ["project"] = (2, 0x2000),
        ["shared_blocks"] = (2, 0x4000), ["verity"] = (2, 0x8000), ["orphan_present"] = (2, 0x10000),
    };

    private static void AssertMatchesDumpe2fs(string image, FsInfo info)
    {
        var (rc, text) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", image]);
        Assert.True(rc == 0, text);
        string Field(string name)
        {
            var m = Regex.Match(text, $@"(?m)^{Regex.Escape(name)}:\s+(.*?)\s*$");
            Assert.True(m.Success, $"dumpe2fs prints no {name}");
            return m.Groups[1].Value;
        }
        Assert.Equal(Field("Block size"), info.BlockSize.ToString());
        Assert.Equal(text.Contains("Cluster size:") ? Field("Cluster size") : Field("Block size"), info.ClusterSize.ToString());
        Assert.Equal(Field("Block count"), info.BlocksCount.ToString());
        Assert.Equal(Field("Free blocks"), info.FreeBlocks.ToString());
        Assert.Equal(Field("Reserved block count"), info.ReservedBlocks.ToString());
        Assert.Equal(Field("Inode count"), info.InodesCount.ToString());
        Assert.Equal(Field("Free inodes"), info.FreeInodes.ToString());
        Assert.Equal(Field("Inode size"), info.InodeSize.ToString());
        Assert.Equal(Field("Filesystem UUID"), new Guid(info.Uuid, bigEndian: true).ToString());
        string label = Encoding.UTF8.GetString(info.VolumeName).TrimEnd('\0');
        Assert.Equal(Field("Filesystem volume name"), label.Length == 0 ? "<none>" : label);
        var words = new uint[3];
        foreach (var name in Field("Filesystem features").Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            Assert.True(FeatureNames.TryGetValue(name, out var f), $"feature {name} missing from the test's table");
            words[f.Word] |= f.Bit;
        }
        Assert.Equal(words, new[] { info.FeatureCompat, info.FeatureIncompat, info.FeatureRoCompat });
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Info_FixtureImage_MatchesDumpe2fs(string config)
    {
        TestImages.Require();
        using var fs = Ext4Fs.Open(TestImages.ImagePath(config), new OpenOptions { ReadOnly = true });
        var info = fs.Info();
        AssertMatchesDumpe2fs(TestImages.ImagePath(config), info);
        Assert.True(info.ReadOnly);
        Assert.Equal((info.FeatureCompat & Features.CompatHasJournal) != 0, info.Journaled); // the words were checked against dumpe2fs
        Assert.False(info.JournalNotReplayed);
        Assert.Equal(0, info.ReplayedTransactions);
    }

    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-1k")]
    [InlineData("ext4-no64-nocsum")]
    public void Info_AfterWrites_CountsMatchDumpe2fsAndStayLive(string config)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            FsInfo before, during;
            using (var fs = Ext4Fs.Open(image))
            {
                before = fs.Info();
                fs.Mkdir(B("/newdir"), 0x1ED);
                int fd = fs.Open(B("/newdir/data"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                fs.Pwrite(fd, new byte[1 << 20], 0);
                fs.Close(fd);
                during = fs.Info();
                Assert.False(during.ReadOnly);
                Assert.True(during.Journaled);
            }
            Assert.Equal(before.FreeInodes - 2, during.FreeInodes);
            Assert.True(during.FreeBlocks <= before.FreeBlocks - (1u << 20) / before.BlockSize, $"{before.FreeBlocks} -> {during.FreeBlocks}");
            using (var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true }))
            {
                var after = fs.Info();
                AssertMatchesDumpe2fs(image, after);
                Assert.Equal((during.FreeBlocks, during.FreeInodes), (after.FreeBlocks, after.FreeInodes));
            }
            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
            Assert.True(rc == 0, output);
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Info_NoJournal_NotJournaledAndStillWritable()
    {
        var mke2fs = Tools.RequireTool("mke2fs");
        var image = Path.Combine(Path.GetTempPath(), $"untorn-nojournal-{Guid.NewGuid():N}.img");
        try
        {
            var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "nojournal", image, "16M"]);
            Assert.True(rc == 0, output);
            using (var fs = Ext4Fs.Open(image))
            {
                var info = fs.Info();
                Assert.False(info.Journaled);
                Assert.False(info.ReadOnly);
                AssertMatchesDumpe2fs(image, info);
                fs.Mkdir(B("/written"), 0x1ED); // metadata in place
            }
            (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
            Assert.True(rc == 0, output);
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Info_DirtyJournal_ReplayedOrNotReplayedReported()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            Jbd2RecoveryTests.WriteLog(image, 3);
            int commits = Regex.Matches(Tools.Run(Tools.RequireTool("debugfs"), ["-R", "logdump", image]).Output, @"type 2 \(commit block\)").Count;
            Assert.Equal(3, commits);
            using (var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true, NoReplay = true }))
            {
                var info = fs.Info();
                Assert.True(info.JournalNotReplayed);
                Assert.True(info.ReadOnly);
                Assert.Equal(0, info.ReplayedTransactions);
                Assert.NotEqual(0u, info.FeatureIncompat & Features.IncompatRecover); // needs_recovery still set
            }
            using (var fs = Ext4Fs.Open(image))
            {
                var info = fs.Info();
                Assert.Equal(commits, info.ReplayedTransactions);
                Assert.False(info.JournalNotReplayed);
                Assert.Equal(0u, info.FeatureIncompat & Features.IncompatRecover);
            }
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Info_FreeCounts_EqualKernelStatfs(string config)
    {
        if (Environment.UserName != "root") Assert.Skip("needs root to loop-mount an image");
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        var mnt = image + ".mnt";
        try
        {
            FsInfo info;
            using (var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true })) info = fs.Info();
            Directory.CreateDirectory(mnt);
            var (rc, output) = Tools.Run("mount", ["-o", "loop,ro", image, mnt]);
            if (rc != 0) Assert.Skip("mount -o loop does not work here: " + output.Trim());
            string statfs;
            try { statfs = Tools.Run("stat", ["-f", "-c", "%S %f %c %d", mnt]).Output.Trim(); }
            finally { Oracles.Umount(mnt); }
            // f_bsize, f_bfree, f_files, f_ffree
            Assert.Equal($"{info.BlockSize} {info.FreeBlocks} {info.InodesCount} {info.FreeInodes}", statfs);
        }
        finally
        {
            if (Directory.Exists(mnt)) Directory.Delete(mnt);
            File.Delete(image);
        }
    }
}
