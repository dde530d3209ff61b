using Untorn.Bench;

// untorn-bench alloc|journal|all [--quick] [--dir DIR]: prints plain-text tables whose ratios
// compare against a baseline measured in the same run. Exit code 0 unless the bench itself
// failed (a tool missing is a printed skip, never a failure; slow numbers are never a failure).
var opts = BenchOptions.Parse(args);
if (opts == null)
{
    Console.Error.WriteLine("usage: Untorn.Bench alloc|journal|all [--quick] [--dir DIR] [--repeat N]");
    return 2;
}
Directory.CreateDirectory(opts.WorkDir);
Console.WriteLine($"untorn bench: {opts.Command}{(opts.Quick ? " --quick" : "")}, work dir {opts.WorkDir}, {Environment.ProcessorCount} CPUs, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
try
{
    if (opts.Command is "alloc" or "all") AllocBench.Run(opts);
    if (opts.Command is "journal" or "all") JournalBench.Run(opts);
}
finally
{
    Images.DeleteAll();
}
return 0;

namespace Untorn.Bench
{
    internal sealed record BenchOptions(string Command, bool Quick, string WorkDir, int Repeat)
    {
        public static BenchOptions? Parse(string[] args)
        {
            string? command = null, dir = null;
            bool quick = false;
            int repeat = 0;
            for (int i = 0; i < args.Length; i++)
            {
                switch (args[i])
                {
                    case "--quick": quick = true; break;
                    case "--dir" when i + 1 < args.Length: dir = args[++i]; break;
                    case "--repeat" when i + 1 < args.Length && int.TryParse(args[i + 1], out repeat) && repeat > 0: i++; break;
                    case "alloc" or "journal" or "all" when command == null: command = args[i]; break;
                    default: return null;
                }
            }
            if (command == null) return null;
            dir ??= Path.Combine(Path.GetTempPath(), $"untorn-bench-{Environment.ProcessId}");
            return new BenchOptions(command, quick, Path.GetFullPath(dir), repeat == 0 ? (quick ? 1 : 3) : repeat);
        }
    }
}
