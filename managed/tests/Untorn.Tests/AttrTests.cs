using System.Globalization;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// utimensat, fchmodat, fchownat: the inode fields as debugfs prints them, e2fsck -fn clean, and,
/// as root, the kernel as the spec: the same calls made through a loop mount of a second copy
/// leave the same bytes in the inode, and the kernel's stat reads back what untorn wrote.
/// </summary>
public partial class AttrTests
{
    private const long Now = TimeSpec.UtimeNow, Omit = TimeSpec.UtimeOmit;
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    /// <summary>One inode as debugfs stat prints it: raw time words (seconds, extra) decoded by the ext4 format's rule.</summary>
    private sealed record DebugfsInode(string Text, int Mode, uint Uid, uint Gid)
    {
        public (long Sec, long Nsec, string Raw) Time(string name)
        {
            var m = Regex.Match(Text, $@"(?m)^\s*{name}: 0x([0-9a-f]{{8}})(?::([0-9a-f]{{8}}))?");
            Assert.True(m.Success, $"debugfs prints no {name}:\n{Text}");
            int lo = (int)uint.Parse(m.Groups[1].Value, NumberStyles.HexNumber);
            uint extra = m.Groups[2].Success ? uint.Parse(m.Groups[2].Value, NumberStyles.HexNumber) : 0;
            return (lo + ((long)(extra & 3) << 32), extra >> 2, m.Value.Trim());
        }
    }

    private static DebugfsInode Debugfs(string image, string path)
    {
        var (rc, text) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", $"stat \"{path}\"", image]);
        Assert.True(rc == 0, text);
        var m = Regex.Match(text, @"Mode:\s+(\d+)");
        var u = Regex.Match(text, @"User:\s+(\d+)\s+Group:\s+(\d+)");
        Assert.True(m.Success && u.Success, text);
        return new DebugfsInode(text, Convert.ToInt32(m.Groups[1].Value, 8), uint.Parse(u.Groups[1].Value), uint.Parse(u.Groups[2].Value));
    }

    private static void AssertFsckClean(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
        Assert.True(rc == 0, $"e2fsck -fn exit {rc}\n{output}");
    }

    [Theory]
    [InlineData("ext4-4k", 1234567890L, 123456789L, 1234567890L, 123456789L)]
    [InlineData("ext4-4k", 4102444800L, 999999999L, 4102444800L, 999999999L)] // 2100: epoch bits
    [InlineData("ext4-4k", 8589934592L, 5L, 8589934592L, 5L)]
    [InlineData("ext4-4k", -5L, 1L, -5L, 1L)]
    [InlineData("ext4-4k", 16000000000L, 7L, 15032385535L, 0L)] // past the epoch bits: clamped, nsec dropped
    [InlineData("ext4-4k", -3000000000L, 5L, -2147483648L, 0L)]
    [InlineData("ext4-1k", 2147483648L, 42L, 2147483648L, 42L)]
    [InlineData("ext4-no64-nocsum", 4294967301L, 11L, 4294967301L, 11L)]
    [InlineData("ext4-128inode", 1234567890L, 123456789L, 1234567890L, 0L)] // whole seconds only
    [InlineData("ext4-128inode", 4102444800L, 5L, 2147483647L, 0L)] // no extra field: clamped to 2038
    [InlineData("ext4-128inode", -5L, 999999999L, -5L, 0L)]
    [InlineData("ext4-128inode", -3000000000L, 1L, -2147483648L, 0L)]
    public void Utimensat_ExplicitTime_DebugfsShowsItAndOtherTimeKept(string config, long sec, long nsec, long wantSec, long wantNsec)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            var before = Debugfs(image, "/hello.txt");
            var beforeEmpty = Debugfs(image, "/empty");
            long start = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            using (var fs = Ext4Fs.Open(image))
            {
                fs.Utimensat(AtFlags.Root, B("/hello.txt"), [new(sec, nsec), new(0, Omit)], 0);
                fs.Utimensat(AtFlags.Root, B("/empty"), [new(0, Omit), new(sec, nsec)], 0);
            }
            var after = Debugfs(image, "/hello.txt");
            var afterEmpty = Debugfs(image, "/empty");
            Assert.Equal((wantSec, wantNsec), (after.Time("atime").Sec, after.Time("atime").Nsec));
            Assert.Equal(before.Time("mtime").Raw, after.Time("mtime").Raw);
            Assert.Equal((wantSec, wantNsec), (afterEmpty.Time("mtime").Sec, afterEmpty.Time("mtime").Nsec));
            Assert.Equal(beforeEmpty.Time("atime").Raw, afterEmpty.Time("atime").Raw);
            Assert.InRange(after.Time("ctime").Sec, start, start + 60);
            Assert.InRange(afterEmpty.Time("ctime").Sec, start, start + 60);
            Assert.Equal(before.Mode, after.Mode);
            AssertFsckClean(image);
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Utimensat_NullTimesAndBothNow_EveryTimeNow()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            long start = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            using (var fs = Ext4Fs.Open(image))
            {
                fs.Utimensat(AtFlags.Root, B("/hello.txt"), null, 0);
                fs.Utimensat(AtFlags.Root, B("/empty"), [new(1, Now), new(2, Now)], 0);
            }
            foreach (var path in new[] { "/hello.txt", "/empty" })
            {
                var d = Debugfs(image, path);
                foreach (var t in new[] { "atime", "mtime", "ctime" })
                    Assert.InRange(d.Time(t).Sec, start, start + 60);
            }
            AssertFsckClean(image);
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Utimensat_BothOmit_NothingWrittenEvenForMissingPathOrReadOnly()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            var hash = System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(image));
            using (var fs = Ext4Fs.Open(image))
            {
                fs.Utimensat(AtFlags.Root, B("/hello.txt"), [new(5, Omit), new(5, Omit)], 0);
                fs.Utimensat(AtFlags.Root, B("/no/such/file"), [new(5, Omit), new(5, Omit)], 0x4); // not even the flags are looked at
            }
            using (var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true }))
                fs.Utimensat(AtFlags.Root, B("/hello.txt"), [new(5, Omit), new(5, Omit)], 0);
            Assert.Equal(hash, System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(image)));
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void Setattr_Mistakes_KernelErrnos()
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            using (var fs = Ext4Fs.Open(image))
            {
                int Err(Action a) => Assert.Throws<Ext4Exception>(a).Errno;
                Assert.Equal(Errno.EINVAL, Err(() => fs.Utimensat(AtFlags.Root, B("/hello.txt"), [new(1, 1_000_000_000), new(0, Omit)], 0)));
                Assert.Equal(Errno.EINVAL, Err(() => fs.Utimensat(AtFlags.Root, B("/hello.txt"), [new(0, Omit), new(1, -1)], 0)));
                Assert.Equal(Errno.EINVAL, Err(() => fs.Utimensat(AtFlags.Root, B("/hello.txt"), null, 0x4)));
                Assert.Equal(Errno.EINVAL, Err(() => fs.Fchmodat(AtFlags.Root, B("/hello.txt"), 0x1FF, 0x200)));
                Assert.Equal(Errno.EINVAL, Err(() => fs.Fchownat(AtFlags.Root, B("/hello.txt"), 1, 1, 0x2)));
                Assert.Equal(Errno.ENOENT, Err(() => fs.Utimensat(AtFlags.Root, B("/missing"), null, 0)));
                Assert.Equal(Errno.ENOENT, Err(() => fs.Fchmodat(AtFlags.Root, B(""), 0x1FF, 0)));
                Assert.Equal(Errno.EOPNOTSUPP, Err(() => fs.Fchmodat(AtFlags.Root, B("/link-fast"), 0x1C0, AtFlags.SymlinkNoFollow)));
                Assert.Equal(Errno.EBADF, Err(() => fs.Futimens(1234, null)));
                int pathFd = fs.Open(B("/hello.txt"), OpenFlags.Path, 0);
                Assert.Equal(Errno.EBADF, Err(() => fs.Futimens(pathFd, null)));
                fs.Utimensat(pathFd, [], [new(77, 0), new(0, Omit)], AtFlags.EmptyPath); // AT_EMPTY_PATH works on O_PATH
                fs.Close(pathFd);
            }
            Assert.Equal(77, Debugfs(image, "/hello.txt").Time("atime").Sec);
            using (var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true }))
            {
                // the path is looked up before the read-only check, as the kernel does
                Assert.Equal(Errno.ENOENT, Assert.Throws<Ext4Exception>(() => fs.Fchmodat(AtFlags.Root, B("/missing"), 0, 0)).Errno);
                Assert.Equal(Errno.EROFS, Assert.Throws<Ext4Exception>(() => fs.Utimensat(AtFlags.Root, B("/hello.txt"), null, 0)).Errno);
                Assert.Equal(Errno.EROFS, Assert.Throws<Ext4Exception>(() => fs.Fchmodat(AtFlags.Root, B("/hello.txt"), 0x1FF, 0)).Errno);
                Assert.Equal(Errno.EROFS, Assert.Throws<Ext4Exception>(() => fs.Fchownat(AtFlags.Root, B("/hello.txt"), 1, 1, 0)).Errno);
            }
        }
        finally { File.Delete(image); }
    }

    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-128inode")]
    [InlineData("ext4-bigalloc")]
    [InlineData("ext4-inline")]
    [InlineData("ext3")]
    public void FchmodatFchownat_Bits_DebugfsShowsThem(string config)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        try
        {
            long start = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            using (var fs = Ext4Fs.Open(image))
            {
                fs.Fchmodat(AtFlags.Root, B("/hello.txt"), 0xF000 | 0x7ED, 0); // type bits in the argument are ignored
                fs.Fchownat(AtFlags.Root, B("/empty"), 70000, 80000, 0); // both halves of 32-bit ids
                fs.Fchownat(AtFlags.Root, B("/link-fast"), 123, uint.MaxValue, AtFlags.SymlinkNoFollow); // the link itself
                fs.Fchmodat(AtFlags.Root, B("/small"), 0x3C0, 0); // 01700 on a directory
            }
            var hello = Debugfs(image, "/hello.txt");
            Assert.Equal(0x7ED, hello.Mode); // 03755
            Assert.Contains("Type: regular", hello.Text);
            Assert.InRange(hello.Time("ctime").Sec, start, start + 60);
            var empty = Debugfs(image, "/empty");
            Assert.Equal((70000u, 80000u), (empty.Uid, empty.Gid));
            var link = Debugfs(image, "/link-fast");
            Assert.Equal(123u, link.Uid);
            Assert.Equal(Debugfs(TestImages.ImagePath(config), "/link-fast").Gid, link.Gid);
            Assert.Contains("Type: symlink", link.Text);
            var small = Debugfs(image, "/small");
            Assert.Equal(0x3C0, small.Mode);
            Assert.Contains("Type: directory", small.Text);
            AssertFsckClean(image);
        }
        finally { File.Delete(image); }
    }

    // Observed on Linux 6.18 as root: chown drops S_ISUID of a non-directory, S_ISGID only with group execute.
    [Theory]
    [InlineData("/hello.txt", 0xDED, uint.MaxValue, uint.MaxValue, 0x1ED)] // 06755, -1, -1 → 0755
    [InlineData("/hello.txt", 0xDE5, 5u, uint.MaxValue, 0x5E5)] // 06745 → 02745
    [InlineData("/hello.txt", 0x5E5, uint.MaxValue, 7u, 0x5E5)] // 02745 kept
    [InlineData("/small", 0xFED, 3u, 3u, 0xFED)] // a directory keeps 07755
    public void Fchownat_SetIdBits_DroppedAsTheKernelDoes(string path, int mode, uint uid, uint gid, int wantMode)
    {
        TestImages.Require();
        var image = TestImages.CopyOf("ext4-4k");
        try
        {
            using (var fs = Ext4Fs.Open(image))
            {
                fs.Fchmodat(AtFlags.Root, B(path), (uint)mode, 0);
                fs.Fchownat(AtFlags.Root, B(path), uid, gid, 0);
            }
            Assert.Equal(wantMode, Debugfs(image, path).Mode);
            AssertFsckClean(image);
        }
        finally { File.Delete(image); }
    }

    // A POSIX ACL (rewritten by the kernel's chmod) and a file capability (dropped by its chown),
    // set by debugfs in the inode (256-byte inodes) or in an xattr block (128-byte inodes).
    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-128inode")]
    public void Setattr_XattrTheKernelWouldRewrite_RefusedOthersAllowed(string config)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        var acl = image + ".acl";
        var cap = image + ".cap";
        try
        {
            // VFS ACL format: version 2, then USER_OBJ rw-, GROUP_OBJ r--, OTHER r--; VFS_CAP revision 2.
            File.WriteAllBytes(acl, [2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 4, 0, 4, 0, 255, 255, 255, 255, 0x20, 0, 4, 0, 255, 255, 255, 255]);
            File.WriteAllBytes(cap, [1, 0, 0, 2, .. new byte[16]]);
            var debugfs = Tools.RequireTool("debugfs");
            Assert.Equal(0, Tools.Run(debugfs, ["-w", "-R", $"ea_set -f {acl} /hello.txt system.posix_acl_access", image]).ExitCode);
            Assert.Equal(0, Tools.Run(debugfs, ["-w", "-R", $"ea_set -f {cap} /empty security.capability", image]).ExitCode);
            Assert.Contains("system.posix_acl_access", Tools.Run(debugfs, ["-R", "ea_list /hello.txt", image]).Output);
            using (var fs = Ext4Fs.Open(image))
            {
                Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<Ext4Exception>(() => fs.Fchmodat(AtFlags.Root, B("/hello.txt"), 0x1C0, 0)).Errno);
                Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<Ext4Exception>(() => fs.Fchownat(AtFlags.Root, B("/empty"), 5, 5, 0)).Errno);
                fs.Fchownat(AtFlags.Root, B("/hello.txt"), 5, 6, 0);
                fs.Fchmodat(AtFlags.Root, B("/empty"), 0x1C0, 0);
            }
            Assert.Equal((5u, 6u), (Debugfs(image, "/hello.txt").Uid, Debugfs(image, "/hello.txt").Gid));
            Assert.Equal(0x1C0, Debugfs(image, "/empty").Mode);
            AssertFsckClean(image);
        }
        finally
        {
            File.Delete(image);
            File.Delete(acl);
            File.Delete(cap);
        }
    }

    [LibraryImport("libc", EntryPoint = "utimensat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int KernelUtimensat(int dirfd, string path, long[] times, int flags);

    [LibraryImport("libc", EntryPoint = "chmod", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int KernelChmod(string path, uint mode);

    [LibraryImport("libc", EntryPoint = "lchown", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int KernelLchown(string path, uint uid, uint gid);

    private sealed record AttrCall(string Path, long[]? Times, int Mode = -1, uint Uid = 0, uint Gid = 0, bool Chown = false);

    /// <summary>The same calls through untorn on one copy and through the kernel on another leave the same inode fields.</summary>
    [Theory]
    [InlineData("ext4-4k")]
    [InlineData("ext4-128inode")]
    [InlineData("ext4-1k")]
    [InlineData("ext4-bigalloc")]
    [InlineData("ext4-inline")]
    [InlineData("ext3")]
    public void SetattrCalls_SameAsKernel_SameInodes(string config)
    {
        if (Environment.UserName != "root") Assert.Skip("needs root to loop-mount an image");
        TestImages.Require();
        var ours = TestImages.CopyOf(config);
        var theirs = TestImages.CopyOf(config);
        var mnt = theirs + ".mnt";
        AttrCall[] calls =
        [
            new("/hello.txt", [4102444800, 123456789, -5, 999999999]),
            new("/empty", [16000000000, 7, 2147483647, 3]),
            new("/small/s1", [-3000000000, 1, 15032385535, 9]),
            new("/small/s2", [1, Omit, 8589934592, 0]),
            new("/small/s3", [4294967301, 11, 0, Omit]),
            new("/hello.txt", null, Mode: 0xDED),
            new("/hello.txt", null, Uid: uint.MaxValue, Gid: uint.MaxValue, Chown: true),
            new("/empty", null, Mode: 0xDE5),
            new("/empty", null, Uid: 70000, Gid: uint.MaxValue, Chown: true),
            new("/small", null, Mode: 0xFED),
            new("/small", null, Uid: 3, Gid: 80000, Chown: true),
            new("/link-fast", null, Uid: 9, Gid: 9, Chown: true),
        ];
        try
        {
            using (var fs = Ext4Fs.Open(ours))
                foreach (var c in calls)
                {
                    if (c.Times is { } t) fs.Utimensat(AtFlags.Root, B(c.Path), [new(t[0], t[1]), new(t[2], t[3])], 0);
                    else if (c.Chown) fs.Fchownat(AtFlags.Root, B(c.Path), c.Uid, c.Gid, AtFlags.SymlinkNoFollow);
                    else fs.Fchmodat(AtFlags.Root, B(c.Path), (uint)c.Mode, 0);
                }
            Directory.CreateDirectory(mnt);
            var (rc, output) = Tools.Run("mount", ["-o", "loop", theirs, mnt]);
            if (rc != 0) Assert.Skip("mount -o loop does not work here: " + output.Trim());
            try
            {
                foreach (var c in calls)
                {
                    string p = mnt + c.Path;
                    int r = c.Times is { } t ? KernelUtimensat(-100, p, t, 0)
                        : c.Chown ? KernelLchown(p, c.Uid, c.Gid)
                        : KernelChmod(p, (uint)c.Mode);
                    Assert.True(r == 0, $"kernel call on {c.Path} failed: errno {Marshal.GetLastPInvokeError()}");
                }
            }
            finally { Assert.Equal(0, Oracles.Umount(mnt).ExitCode); }
            foreach (var path in calls.Select(c => c.Path).Distinct())
            {
                DebugfsInode a = Debugfs(ours, path), k = Debugfs(theirs, path);
                Assert.Equal((k.Mode, k.Uid, k.Gid), (a.Mode, a.Uid, a.Gid));
                Assert.Equal(k.Time("atime").Raw, a.Time("atime").Raw);
                Assert.Equal(k.Time("mtime").Raw, a.Time("mtime").Raw);
            }
            AssertFsckClean(ours);
            KernelStatReadsBack(ours, calls);
        }
        finally
        {
            if (Directory.Exists(mnt)) Directory.Delete(mnt);
            File.Delete(ours);
            File.Delete(theirs);
        }
    }

    // The kernel's stat of untorn's image: nanosecond times as GNU stat prints them, mode, owner.
    private static void KernelStatReadsBack(string image, AttrCall[] calls)
    {
        var mnt = image + ".ro";
        Directory.CreateDirectory(mnt);
        try
        {
            var (rc, output) = Tools.Run("mount", ["-o", "loop,ro", image, mnt]);
            Assert.True(rc == 0, output);
            try
            {
                foreach (var c in calls.Where(c => c.Times != null))
                {
                    var (_, text) = Tools.Run("stat", ["-c", "%.9X %.9Y", mnt + c.Path]);
                    var d = Debugfs(image, c.Path);
                    string Expect(string field) { var (s, n, _) = d.Time(field); return StatDecimal((BigInteger)s * 1_000_000_000 + n); }
                    Assert.Equal($"{Expect("atime")} {Expect("mtime")}", text.Trim());
                }
                var (_, owner) = Tools.Run("stat", ["-c", "%a %u %g", mnt + "/empty"]);
                var e = Debugfs(image, "/empty");
                Assert.Equal($"{Convert.ToString(e.Mode, 8)} {e.Uid} {e.Gid}", owner.Trim());
            }
            finally { Oracles.Umount(mnt); }
        }
        finally { Directory.Delete(mnt); }
    }

    // GNU stat's %.9X: the time in nanoseconds as a signed decimal with nine fraction digits.
    private static string StatDecimal(BigInteger ns)
    {
        var abs = BigInteger.Abs(ns);
        return $"{(ns.Sign < 0 ? "-" : "")}{abs / 1_000_000_000}.{(long)(abs % 1_000_000_000):D9}";
    }
}
