// Markers read by the header generator (managed/tools/Untorn.HeaderGen). They carry the C spelling
// of what the C# signature cannot say by itself; everything else is derived from the C# types.
namespace Untorn.Native;

/// <summary>The C type to print for a parameter or return value (e.g. "const char *", "ssize_t").</summary>
[AttributeUsage(AttributeTargets.Parameter | AttributeTargets.ReturnValue | AttributeTargets.Field)]
public sealed class CTypeAttribute(string spelling) : Attribute
{
    public string Spelling { get; } = spelling;
}

/// <summary>An ABI struct emitted into the header as <c>struct Name { ... }</c>.</summary>
[AttributeUsage(AttributeTargets.Struct)]
public sealed class CStructAttribute(string name) : Attribute
{
    public string Name { get; } = name;
}

/// <summary>A struct the header declares only by name (an opaque handle such as <c>struct untorn_fs</c>).</summary>
[AttributeUsage(AttributeTargets.Struct)]
public sealed class COpaqueAttribute(string name) : Attribute
{
    public string Name { get; } = name;
}

/// <summary>A struct that a system header already defines (e.g. <c>struct iovec</c> from sys/uio.h).</summary>
[AttributeUsage(AttributeTargets.Struct)]
public sealed class CExternalAttribute(string name, string header) : Attribute
{
    public string Name { get; } = name;
    public string Header { get; } = header;
}

/// <summary>A class whose public const fields become <c>#define</c>s, grouped under its doc comment.</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class CConstantsAttribute : Attribute
{
}
