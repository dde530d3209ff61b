namespace Untorn.Tests;

/// <summary>The buffer cache overlay and metadata handles: visibility, undo, commit, no torn reads.</summary>
public class TransactionTests
{
    private const int Bs = 1024;

    private static (MemoryBlockDevice Dev, BufferCache Cache, byte[] Model) Make(int blocks, int seed)
    {
        var image = new byte[blocks * Bs];
        new Random(seed).NextBytes(image);
        var dev = new MemoryBlockDevice(image);
        return (dev, new BufferCache(dev, Bs), image.ToArray());
    }

    [Fact]
    public void Read_RandomPublishesAndDataWrites_MatchFlatModel()
    {
        for (int seed = 0; seed < 200; seed++)
        {
            var (_, cache, model) = Make(16, seed);
            var published = new HashSet<int>();
            var rng = new Random(seed);
            for (int step = 0; step < 200; step++)
            {
                int op = rng.Next(3);
                if (op == 0)
                {
                    ulong block = (ulong)rng.Next(16);
                    var data = new byte[Bs];
                    rng.NextBytes(data);
                    cache.Publish(block, data);
                    published.Add((int)block);
                    data.CopyTo(model, (int)block * Bs);
                }
                else if (op == 1)
                {
                    int off = rng.Next(model.Length), len = rng.Next(Math.Min(3 * Bs, model.Length - off) + 1);
                    var data = new byte[len];
                    rng.NextBytes(data);
                    bool overlaps = len > 0 && Enumerable.Range(off / Bs, (off + len - 1) / Bs - off / Bs + 1).Any(published.Contains);
                    if (overlaps)
                    {
                        Assert.Throws<InvalidOperationException>(() => cache.Write(off, data));
                        continue;
                    }
                    cache.Write(off, data);
                    data.CopyTo(model, off);
                }
                else
                {
                    int off = rng.Next(model.Length), len = rng.Next(Math.Min(4 * Bs, model.Length - off) + 1);
                    var got = new byte[len];
                    cache.Read(off, got);
                    Assert.True(model.AsSpan(off, len).SequenceEqual(got), $"seed {seed} step {step}: read {len} at {off}");
                }
            }
        }
    }

    [Fact]
    public void HandleDispose_WithoutComplete_RestoresEveryBlock()
    {
        var (dev, cache, model) = Make(8, 1);
        var tm = new TransactionManager(cache, new InPlaceCommitWriter(dev, Bs));
        using (var h = tm.Start())
        {
            var b = h.GetWriteAccess(3);
            b[0] ^= 0xFF;
            h.Dirty(3, b);
            h.Complete();
        }
        var afterFirst = cache.Snapshot(3);
        bool undone = false;
        using (var h = tm.Start())
        {
            foreach (ulong block in new ulong[] { 3, 5, 3 })
            {
                var b = h.GetWriteAccess(block);
                b.AsSpan().Fill(0xAA);
                h.Dirty(block, b);
            }
            h.OnAbort(() => undone = true);
            Assert.All(cache.Snapshot(5), x => Assert.Equal(0xAA, x));
        }
        Assert.True(undone);
        Assert.Equal(afterFirst, cache.Snapshot(3));
        Assert.True(model.AsSpan(5 * Bs, Bs).SequenceEqual(cache.Snapshot(5)));
        Assert.Equal(1, tm.RunningBlocks);
    }

    [Fact]
    public void Commit_InPlace_WritesHomeAndEmptiesCache()
    {
        var (dev, cache, _) = Make(8, 2);
        var tm = new TransactionManager(cache, new InPlaceCommitWriter(dev, Bs));
        var expected = new byte[Bs];
        new Random(7).NextBytes(expected);
        using (var h = tm.Start())
        {
            h.Dirty(6, expected.ToArray());
            h.Complete();
        }
        Assert.False(dev.Image.AsSpan(6 * Bs, Bs).SequenceEqual(expected)); // not home before the commit
        tm.Commit();
        Assert.True(dev.Image.AsSpan(6 * Bs, Bs).SequenceEqual(expected));
        Assert.Equal(0, cache.Count);
        Assert.Equal(0, tm.RunningBlocks);
    }

    [Fact]
    public void Read_ConcurrentWithHandles_NeverSeesHalfABlock()
    {
        var (dev, cache, _) = Make(4, 3);
        var tm = new TransactionManager(cache, new InPlaceCommitWriter(dev, Bs));
        using (var h = tm.Start())
        {
            h.Dirty(1, new byte[Bs]);
            h.Complete();
        }
        bool stop = false;
        Exception? failure = null;
        var writer = new Thread(() =>
        {
            try
            {
            for (int i = 1; !Volatile.Read(ref stop); i++)
            {
                using var h = tm.Start();
                var b = h.GetWriteAccess(1);
                b.AsSpan().Fill((byte)i);
                h.Dirty(1, b);
                if (i % 3 == 0) continue; // aborted: the previous bytes come back
                h.Complete();
                if (i % 7 == 0) tm.Commit();
            }
            }
            catch (Exception e) { failure = e; }
        });
        writer.Start();
        var buf = new byte[Bs];
        try
        {
            for (int r = 0; r < 200_000; r++)
            {
                cache.Read(Bs, buf);
                byte first = buf[0];
                Assert.True(!buf.AsSpan().ContainsAnyExcept(first), $"torn read at iteration {r}");
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            writer.Join();
        }
        Assert.Null(failure);
    }
}
