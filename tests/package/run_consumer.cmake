# SPDX-License-Identifier: Apache-2.0
# cmake -DMODE=find_package|add_subdirectory -DSOURCE_DIR=... -DBUILD_DIR=... -DWORK=...
#       [-DGENERATOR=...] [-DCUDA=ON] -P run_consumer.cmake
# Installs deepmoe from BUILD_DIR into WORK/prefix (find_package mode), then configures, builds
# and runs the consumer project (with CUDA: its deepmoe::cuda program too); any failing step
# fails the test.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
  message("${out}")
endfunction()
file(REMOVE_RECURSE "${WORK}")
set(args -S "${SOURCE_DIR}/tests/package/consumer" -B "${WORK}/build"
         -DDEEPMOE_CONSUMER_MODE=${MODE} -DCMAKE_BUILD_TYPE=Release)
if(GENERATOR)
  list(APPEND args -G "${GENERATOR}")
endif()
if(CUDA)
  list(APPEND args -DDEEPMOE_CONSUMER_CUDA=ON)
endif()
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK}/prefix")
  list(APPEND args "-DCMAKE_PREFIX_PATH=${WORK}/prefix")
else()
  list(APPEND args "-DDEEPMOE_SOURCE_DIR=${SOURCE_DIR}")
endif()
run(${CMAKE_COMMAND} ${args})
run(${CMAKE_COMMAND} --build "${WORK}/build")
run("${WORK}/build/consumer")
if(CUDA)
  run("${WORK}/build/consumer_cuda")
endif()
