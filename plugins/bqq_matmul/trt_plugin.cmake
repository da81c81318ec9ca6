# TensorRT plugins BQQMatMul and BQQGather, one library. Included by
# plugins/bqq_matmul/CMakeLists.txt when TensorRT_FOUND (cmake/FindTensorRT.cmake); links the
# objects of the CUDA kernels (bqq_matmul_kernels, which hold the gather kernel too).
#
#   bqq_trt_plugin          libbqq_trt_plugin.so: exports getCreators/setLoggerFinder for
#                           IPluginRegistry::loadLibrary, trtexec --dynamicPlugins and
#                           --setPluginsToSerialize; registers nothing by itself.
#   bqq_trt_plugin_autoreg  libbqq_trt_plugin_autoreg.so: registers both creators when loaded
#                           (ctypes.CDLL, dlopen, trtexec --staticPlugins).
# Both share the objects of bqq_trt_plugin_core. Load one of the two per process.
#
# With BQQ_TRT_COMPILE_CHECK (headers only, no TensorRT libraries) bqq_trt_plugin is an
# OBJECT library of every plugin source (both plugins): it compiles, nothing is linked.

set(_bqq_trt_dir "${CMAKE_CURRENT_LIST_DIR}")
set(_bqq_trt_core_sources "${_bqq_trt_dir}/BQQPluginCommon.cpp" "${_bqq_trt_dir}/BQQMatMulPlugin.cpp"
    "${_bqq_trt_dir}/BQQMatMulPluginCreator.cpp" "${BQQ_GATHER_DIR}/BQQGatherPlugin.cpp"
    "${BQQ_GATHER_DIR}/BQQGatherPluginCreator.cpp")

function(_bqq_trt_compile_settings target)
  target_include_directories(${target} PRIVATE "${_bqq_trt_dir}" "${BQQ_GATHER_DIR}")
  target_compile_features(${target} PRIVATE cxx_std_17)
  set_target_properties(${target} PROPERTIES CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
                                             POSITION_INDEPENDENT_CODE ON)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra $<$<BOOL:${BQQ_WERROR}>:-Werror>)
  endif()
endfunction()

if(BQQ_TRT_COMPILE_CHECK)
  add_library(bqq_trt_plugin OBJECT ${_bqq_trt_core_sources} "${_bqq_trt_dir}/BQQPluginLibrary.cpp"
                                    "${_bqq_trt_dir}/BQQPluginStaticRegistration.cpp")
  _bqq_trt_compile_settings(bqq_trt_plugin)
  # Usage requirements only (include directories): an OBJECT library links nothing.
  target_link_libraries(bqq_trt_plugin PRIVATE TensorRT::headers CUDA::cudart_static)
  return()
endif()

add_library(bqq_trt_plugin_core OBJECT ${_bqq_trt_core_sources})
_bqq_trt_compile_settings(bqq_trt_plugin_core)
target_link_libraries(bqq_trt_plugin_core PRIVATE bqq_matmul_kernels TensorRT::nvinfer)

foreach(_bqq_target_and_entry IN ITEMS "bqq_trt_plugin:BQQPluginLibrary.cpp"
                                       "bqq_trt_plugin_autoreg:BQQPluginStaticRegistration.cpp")
  string(REPLACE ":" ";" _bqq_pair "${_bqq_target_and_entry}")
  list(GET _bqq_pair 0 _bqq_target)
  list(GET _bqq_pair 1 _bqq_entry)
  add_library(${_bqq_target} SHARED "${_bqq_trt_dir}/${_bqq_entry}")
  _bqq_trt_compile_settings(${_bqq_target})
  # Object libraries contribute their objects only to targets that link them directly.
  target_link_libraries(${_bqq_target} PRIVATE bqq_trt_plugin_core bqq_matmul_kernels TensorRT::nvinfer)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    # A missing symbol must fail here, not at dlopen time on the target device.
    target_link_options(${_bqq_target} PRIVATE "LINKER:--no-undefined")
  endif()
endforeach()

include(GNUInstallDirs)
install(TARGETS bqq_trt_plugin bqq_trt_plugin_autoreg LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")
