# Builds libuntorn.so with `dotnet publish` (NativeAOT) and exposes it as the imported target
# untorn::untorn (library + native-headers/ include directory).
find_program(DOTNET_EXECUTABLE dotnet REQUIRED)

set(UNTORN_MANAGED_DIR "${PROJECT_SOURCE_DIR}/managed")
set(UNTORN_NATIVE_DIR "${CMAKE_BINARY_DIR}/native" CACHE INTERNAL "where libuntorn.so is built")
set(UNTORN_LIBRARY "${UNTORN_NATIVE_DIR}/libuntorn.so")
set(UNTORN_DOTNET_CONFIG Release CACHE STRING "dotnet configuration for libuntorn.so")

# Every managed source is an input: a change anywhere in the engine rebuilds the library.
file(GLOB_RECURSE UNTORN_MANAGED_SOURCES CONFIGURE_DEPENDS
  "${UNTORN_MANAGED_DIR}/src/*.cs" "${UNTORN_MANAGED_DIR}/src/*.csproj")
list(FILTER UNTORN_MANAGED_SOURCES EXCLUDE REGEX "/(bin|obj)/")

add_custom_command(
  OUTPUT "${UNTORN_LIBRARY}"
  COMMAND "${DOTNET_EXECUTABLE}" publish "${UNTORN_MANAGED_DIR}/src/Untorn.Native/Untorn.Native.csproj"
          -c ${UNTORN_DOTNET_CONFIG} -r linux-x64 --nologo -v quiet -o "${UNTORN_NATIVE_DIR}/publish"
  COMMAND "${CMAKE_COMMAND}" -E copy "${UNTORN_NATIVE_DIR}/publish/Untorn.Native.so" "${UNTORN_LIBRARY}"
  DEPENDS ${UNTORN_MANAGED_SOURCES} "${UNTORN_MANAGED_DIR}/Directory.Build.props"
  COMMENT "dotnet publish (NativeAOT) -> libuntorn.so"
  VERBATIM)
add_custom_target(untorn_native ALL DEPENDS "${UNTORN_LIBRARY}")

add_library(untorn::untorn SHARED IMPORTED GLOBAL)
set_target_properties(untorn::untorn PROPERTIES
  IMPORTED_LOCATION "${UNTORN_LIBRARY}"
  IMPORTED_SONAME "libuntorn.so"
  INTERFACE_INCLUDE_DIRECTORIES "${PROJECT_SOURCE_DIR}/native-headers")
add_dependencies(untorn::untorn untorn_native)
