# Test suites that are not C: the image fixture every suite reads, and the xunit suite.
find_program(UNTORN_BASH bash REQUIRED)
set(UNTORN_TEST_IMAGES_DIR "${CMAKE_BINARY_DIR}/test-images" CACHE INTERNAL "images made by make-test-images.sh")

# mke2fs -d of a generated tree in every config, e2fsck -fyD, e2fsck -fn. Exit 77 = tools missing.
add_test(NAME fixture.test_images
  COMMAND "${UNTORN_BASH}" "${PROJECT_SOURCE_DIR}/c-tests/fixtures/make-test-images.sh" "${UNTORN_TEST_IMAGES_DIR}")
set_tests_properties(fixture.test_images PROPERTIES
  FIXTURES_SETUP test_images SKIP_RETURN_CODE 77 TIMEOUT 600 LABELS fixture)

# The managed engine's own suite, on the same images. Detailed output puts what passing tests
# print (e.g. the crash harness's state counts) into the CTest log.
add_test(NAME xunit
  COMMAND "${DOTNET_EXECUTABLE}" test --project "${UNTORN_MANAGED_DIR}/tests/Untorn.Tests/Untorn.Tests.csproj"
          -c ${UNTORN_DOTNET_CONFIG} --output Detailed)
set_tests_properties(xunit PROPERTIES
  FIXTURES_REQUIRED test_images
  ENVIRONMENT "UNTORN_TEST_IMAGES=${UNTORN_TEST_IMAGES_DIR}"
  TIMEOUT 1500 LABELS managed)
