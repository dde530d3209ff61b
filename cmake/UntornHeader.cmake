# The generated header: untorn_header regenerates native-headers/untorn.h from the C# exports;
# the build compiles the managed layout (static_asserts) against the committed header as C11 and
# C++17; CTest checks the header is not stale and declares exactly what libuntorn.so exports.
set(UNTORN_HEADER "${PROJECT_SOURCE_DIR}/native-headers/untorn.h")
set(UNTORN_HEADERGEN_DIR "${CMAKE_BINARY_DIR}/headergen")
set(UNTORN_HEADERGEN "${UNTORN_HEADERGEN_DIR}/Untorn.HeaderGen.dll")
set(UNTORN_LAYOUT_C "${CMAKE_BINARY_DIR}/layout-check/untorn_layout_check.c")
set(UNTORN_LAYOUT_CXX "${CMAKE_BINARY_DIR}/layout-check/untorn_layout_check.cpp")
file(GLOB UNTORN_HEADERGEN_SOURCES CONFIGURE_DEPENDS "${UNTORN_MANAGED_DIR}/tools/Untorn.HeaderGen/*.cs")

add_custom_command(
  OUTPUT "${UNTORN_HEADERGEN}" "${UNTORN_LAYOUT_C}" "${UNTORN_LAYOUT_CXX}"
  COMMAND "${DOTNET_EXECUTABLE}" build "${UNTORN_MANAGED_DIR}/tools/Untorn.HeaderGen/Untorn.HeaderGen.csproj"
          -c ${UNTORN_DOTNET_CONFIG} --nologo -v quiet -o "${UNTORN_HEADERGEN_DIR}"
  COMMAND "${CMAKE_COMMAND}" -E make_directory "${CMAKE_BINARY_DIR}/layout-check"
  COMMAND "${DOTNET_EXECUTABLE}" "${UNTORN_HEADERGEN}" layout "${UNTORN_LAYOUT_C}"
  COMMAND "${CMAKE_COMMAND}" -E copy "${UNTORN_LAYOUT_C}" "${UNTORN_LAYOUT_CXX}"
  DEPENDS ${UNTORN_MANAGED_SOURCES} "${UNTORN_MANAGED_DIR}/tools/Untorn.HeaderGen/Untorn.HeaderGen.csproj"
          ${UNTORN_HEADERGEN_SOURCES}
  COMMENT "header generator and managed struct layout"
  VERBATIM)
add_custom_target(untorn_headergen ALL DEPENDS "${UNTORN_HEADERGEN}" "${UNTORN_LAYOUT_C}")
# dotnet publish and dotnet build share the engine's obj/ folders: never run them at once.
add_dependencies(untorn_headergen untorn_native)

add_custom_target(untorn_header
  COMMAND "${DOTNET_EXECUTABLE}" "${UNTORN_HEADERGEN}" header "${UNTORN_HEADER}"
  DEPENDS untorn_headergen
  COMMENT "regenerate native-headers/untorn.h")

set(UNTORN_STRICT_FLAGS -Wall -Wextra -Werror -pedantic)
add_library(untorn_layout_check_c OBJECT "${UNTORN_LAYOUT_C}")
set_target_properties(untorn_layout_check_c PROPERTIES C_STANDARD 11 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
add_library(untorn_layout_check_cxx OBJECT "${UNTORN_LAYOUT_CXX}")
set_target_properties(untorn_layout_check_cxx PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF)
foreach(t untorn_layout_check_c untorn_layout_check_cxx)
  target_compile_options(${t} PRIVATE ${UNTORN_STRICT_FLAGS})
  target_include_directories(${t} PRIVATE "${PROJECT_SOURCE_DIR}/native-headers")
  add_dependencies(${t} untorn_headergen)
endforeach()

add_test(NAME header.stale
  COMMAND "${DOTNET_EXECUTABLE}" "${UNTORN_HEADERGEN}" check "${UNTORN_HEADER}")
add_test(NAME header.exports
  COMMAND "${CMAKE_COMMAND}" -DLIBRARY=${UNTORN_LIBRARY} -DHEADER=${UNTORN_HEADER}
          -P "${PROJECT_SOURCE_DIR}/cmake/CheckExports.cmake")

# The same layout asserts through clang (the issue asks for clang's verdict too), where installed.
find_program(UNTORN_CLANG NAMES clang clang-14 clang-15 clang-16)
find_program(UNTORN_CLANGXX NAMES clang++ clang++-14 clang++-15 clang++-16)
if(UNTORN_CLANG AND UNTORN_CLANGXX)
  add_test(NAME header.clang_c11
    COMMAND "${UNTORN_CLANG}" -std=c11 ${UNTORN_STRICT_FLAGS} -fsyntax-only
            -I "${PROJECT_SOURCE_DIR}/native-headers" "${UNTORN_LAYOUT_C}")
  add_test(NAME header.clang_cxx17
    COMMAND "${UNTORN_CLANGXX}" -std=c++17 ${UNTORN_STRICT_FLAGS} -fsyntax-only
            -I "${PROJECT_SOURCE_DIR}/native-headers" "${UNTORN_LAYOUT_CXX}")
else()
  message(STATUS "clang not found: header.clang_* checks are not registered (gcc still checks the header)")
endif()
