using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Xml.Linq;
using Untorn.Native;

namespace Untorn.HeaderGen;

/// <summary>A field of an ABI struct with the layout the CLR gives it.</summary>
internal sealed record CField(string Name, string CType, int ArrayLength, string? Doc, int Offset);

internal sealed record CStruct(string Name, string? Doc, IReadOnlyList<CField> Fields, int Size, Type ClrType);

internal sealed record CConstant(string Name, string Value, string? Doc);

internal sealed record CConstantGroup(string? Doc, IReadOnlyList<CConstant> Constants);

internal sealed record CParameter(string CType, string Name);

internal sealed record CFunction(string Name, string ReturnType, IReadOnlyList<CParameter> Parameters, string? Doc);

internal sealed record CExternal(string Name, string Header, int Size);

/// <summary>
/// The C ABI as declared in C#: [UnmanagedCallersOnly] methods, [CStruct]/[COpaque]/[CExternal]
/// structs and [CConstants] classes of Untorn.Native, in declaration (metadata) order.
/// </summary>
internal sealed class NativeApi
{
    public required IReadOnlyList<CConstantGroup> ConstantGroups { get; init; }
    public required IReadOnlyList<string> Opaque { get; init; }
    public required IReadOnlyList<CExternal> Externals { get; init; }
    public required IReadOnlyList<CStruct> Structs { get; init; }
    public required IReadOnlyList<CFunction> Functions { get; init; }

    public static NativeApi Load(Assembly assembly)
    {
        var docs = XmlDocs.For(assembly);
        var types = assembly.GetTypes().Where(t => !t.IsNested).OrderBy(t => t.MetadataToken).ToArray();
        var map = new TypeMap(types);

        var constants = types.Where(t => t.GetCustomAttribute<CConstantsAttribute>() != null)
            .Select(t => new CConstantGroup(docs.Type(t),
                t.GetFields(BindingFlags.Public | BindingFlags.Static).Where(f => f.IsLiteral)
                    .OrderBy(f => f.MetadataToken)
                    .Select(f => new CConstant(f.Name, ConstantText(f.GetRawConstantValue()!), docs.Field(f)))
                    .ToArray()))
            .ToArray();

        var structs = types.Where(t => t.GetCustomAttribute<CStructAttribute>() != null)
            .Select(t => new CStruct(t.GetCustomAttribute<CStructAttribute>()!.Name, docs.Type(t),
                t.GetFields(BindingFlags.Public | BindingFlags.Instance).OrderBy(f => f.MetadataToken)
                    .Select(f => Field(f, map, docs)).ToArray(),
                Marshal.SizeOf(t), t))
            .ToArray();

        var functions = types.SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Static))
            .Where(m => m.GetCustomAttribute<UnmanagedCallersOnlyAttribute>() != null)
            .OrderBy(m => m.DeclaringType!.MetadataToken).ThenBy(m => m.MetadataToken)
            .Select(m => new CFunction(
                m.GetCustomAttribute<UnmanagedCallersOnlyAttribute>()!.EntryPoint
                    ?? throw new InvalidOperationException($"{m.Name}: [UnmanagedCallersOnly] needs an EntryPoint"),
                Spelling(m.ReturnParameter, map),
                m.GetParameters().Select(p => new CParameter(Spelling(p, map), p.Name!)).ToArray(),
                docs.Method(m)))
            .ToArray();

        return new NativeApi
        {
            ConstantGroups = constants,
            Opaque = types.Select(t => t.GetCustomAttribute<COpaqueAttribute>()?.Name).OfType<string>().ToArray(),
            Externals = types.Where(t => t.GetCustomAttribute<CExternalAttribute>() != null)
                .Select(t => new CExternal(t.GetCustomAttribute<CExternalAttribute>()!.Name,
                    t.GetCustomAttribute<CExternalAttribute>()!.Header, Marshal.SizeOf(t)))
                .ToArray(),
            Structs = structs,
            Functions = functions,
        };
    }

    private static CField Field(FieldInfo f, TypeMap map, XmlDocs docs)
    {
        var spelled = f.GetCustomAttribute<CTypeAttribute>()?.Spelling;
        int offset = (int)Marshal.OffsetOf(f.DeclaringType!, f.Name);
        if (f.GetCustomAttribute<FixedBufferAttribute>() is { } fixedBuffer)
            return new CField(f.Name, spelled ?? map.FieldType(fixedBuffer.ElementType), fixedBuffer.Length, docs.Field(f), offset);
        return new CField(f.Name, spelled ?? map.FieldType(f.FieldType), 0, docs.Field(f), offset);
    }

    private static string Spelling(ParameterInfo p, TypeMap map) =>
        p.GetCustomAttribute<CTypeAttribute>()?.Spelling ?? map.ParameterType(p.ParameterType);

    private static string ConstantText(object value) => value switch
    {
        uint u => $"0x{u:x}u",
        int i when i < 0 => $"({i})",
        int i => $"0x{i:x}",
        ulong ul => $"0x{ul:x}ull",
        long l => l < 0 ? $"({l}ll)" : $"{l}ll",
        _ => throw new InvalidOperationException($"constant of unsupported type {value.GetType()}"),
    };
}

/// <summary>C spellings of the CLR types that may cross the ABI.</summary>
internal sealed class TypeMap(IEnumerable<Type> types)
{
    private readonly Dictionary<Type, string> _structNames = types
        .Select(t => (t, name: t.GetCustomAttribute<CStructAttribute>()?.Name
            ?? t.GetCustomAttribute<COpaqueAttribute>()?.Name
            ?? t.GetCustomAttribute<CExternalAttribute>()?.Name))
        .Where(x => x.name != null).ToDictionary(x => x.t, x => "struct " + x.name);

    /// <summary>Struct fields use fixed-width types (the layout is the contract).</summary>
    public string FieldType(Type t) => t.IsPointer ? Pointer(t, FieldType) : Scalar(t, fixedWidth: true);

    /// <summary>Parameters read like liburing's prototypes: int, unsigned, size_t.</summary>
    public string ParameterType(Type t) => t.IsPointer ? Pointer(t, ParameterType) : Scalar(t, fixedWidth: false);

    private static string Pointer(Type t, Func<Type, string> element)
    {
        string inner = element(t.GetElementType()!);
        return inner.EndsWith('*') ? inner + "*" : inner + " *";
    }

    private string Scalar(Type t, bool fixedWidth)
    {
        if (_structNames.TryGetValue(t, out var name)) return name;
        if (t == typeof(void)) return "void";
        if (t == typeof(int)) return fixedWidth ? "int32_t" : "int";
        if (t == typeof(uint)) return fixedWidth ? "uint32_t" : "unsigned";
        if (t == typeof(long)) return "int64_t";
        if (t == typeof(ulong)) return "uint64_t";
        if (t == typeof(short)) return "int16_t";
        if (t == typeof(ushort)) return "uint16_t";
        if (t == typeof(sbyte)) return "int8_t";
        if (t == typeof(byte)) return "uint8_t";
        if (t == typeof(nint)) return "intptr_t";
        if (t == typeof(nuint)) return "size_t";
        throw new InvalidOperationException($"type {t} cannot cross the C ABI (no C spelling; add [CType] or a C struct attribute)");
    }
}

/// <summary>Summaries from the assembly's XML documentation file, as one line of plain text.</summary>
internal sealed class XmlDocs
{
    private readonly Dictionary<string, string> _summaries = new();

    public static XmlDocs For(Assembly assembly)
    {
        var docs = new XmlDocs();
        var path = Path.ChangeExtension(assembly.Location, ".xml");
        if (!File.Exists(path)) throw new FileNotFoundException("the XML documentation file of the exports is missing", path);
        foreach (var member in XDocument.Load(path).Descendants("member"))
        {
            var summary = member.Element("summary");
            if (summary == null) continue;
            foreach (var see in summary.Descendants("see").ToArray())
                see.ReplaceWith(new XText(see.Attribute("cref")?.Value.Split('.', ':').Last() ?? see.Value));
            var text = string.Join(' ', summary.Value.Split((char[])[' ', '\n', '\r', '\t'], StringSplitOptions.RemoveEmptyEntries));
            docs._summaries[member.Attribute("name")!.Value] = text.Replace("*/", "* /");
        }
        return docs;
    }

    public string? Type(Type t) => _summaries.GetValueOrDefault("T:" + t.FullName);

    public string? Field(FieldInfo f) => _summaries.GetValueOrDefault($"F:{f.DeclaringType!.FullName}.{f.Name}");

    public string? Method(MethodInfo m)
    {
        string prefix = $"M:{m.DeclaringType!.FullName}.{m.Name}(";
        return _summaries.FirstOrDefault(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)
            || kv.Key == $"M:{m.DeclaringType!.FullName}.{m.Name}").Value;
    }
}
