# Builds a CO-RE BPF object with clang and wraps it in a bpftool skeleton.
#
# vmlinux.h comes from this host's BTF when it has one, so the build sees the
# running kernel's types; otherwise from the committed x86_64 fallback. Either
# way the object relocates at load time (CO-RE): no kernel-version checks are
# compiled in.
find_program(BPF_CLANG NAMES clang clang-16 clang-15 clang-14 REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)

set(KLEAK_VMLINUX_BTF "/sys/kernel/btf/vmlinux" CACHE FILEPATH "BTF used to generate vmlinux.h")
set(KLEAK_VMLINUX_DIR ${CMAKE_CURRENT_BINARY_DIR}/vmlinux)
if(EXISTS ${KLEAK_VMLINUX_BTF})
  add_custom_command(
    OUTPUT ${KLEAK_VMLINUX_DIR}/vmlinux.h
    COMMAND ${CMAKE_COMMAND} -E make_directory ${KLEAK_VMLINUX_DIR}
    COMMAND ${BPFTOOL} btf dump file ${KLEAK_VMLINUX_BTF} format c > ${KLEAK_VMLINUX_DIR}/vmlinux.h.tmp
    COMMAND ${CMAKE_COMMAND} -E rename ${KLEAK_VMLINUX_DIR}/vmlinux.h.tmp ${KLEAK_VMLINUX_DIR}/vmlinux.h
    COMMENT "Generating vmlinux.h from ${KLEAK_VMLINUX_BTF}"
    VERBATIM)
  set(KLEAK_VMLINUX_H ${KLEAK_VMLINUX_DIR}/vmlinux.h)
else()
  message(STATUS "kleakd: ${KLEAK_VMLINUX_BTF} not found, using the committed x86_64 vmlinux.h")
  set(KLEAK_VMLINUX_DIR ${CMAKE_CURRENT_SOURCE_DIR}/bpf/vmlinux/x86_64)
  set(KLEAK_VMLINUX_H ${KLEAK_VMLINUX_DIR}/vmlinux.h)
endif()

function(kleak_bpf_skeleton target source)
  get_filename_component(stem ${source} NAME_WE)
  set(obj ${CMAKE_CURRENT_BINARY_DIR}/${stem}.bpf.o)
  set(skel ${CMAKE_CURRENT_BINARY_DIR}/generated/${stem}.skel.h)
  file(GLOB bpf_headers ${CMAKE_CURRENT_SOURCE_DIR}/bpf/*.h)
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror
            -I${KLEAK_VMLINUX_DIR} -I${CMAKE_CURRENT_SOURCE_DIR}/bpf
            -c ${CMAKE_CURRENT_SOURCE_DIR}/${source} -o ${obj}
    DEPENDS ${source} ${bpf_headers} ${KLEAK_VMLINUX_H}
    COMMENT "Compiling BPF object ${stem}.bpf.o"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/generated
    COMMAND sh -c "${BPFTOOL} gen skeleton ${obj} name ${stem}_bpf > ${skel}.tmp && mv ${skel}.tmp ${skel}"
    DEPENDS ${obj}
    COMMENT "Generating BPF skeleton ${stem}.skel.h"
    VERBATIM)
  add_custom_target(${target}_gen DEPENDS ${skel})
  add_library(${target} INTERFACE)
  add_dependencies(${target} ${target}_gen)
  target_include_directories(${target} INTERFACE ${CMAKE_CURRENT_BINARY_DIR}/generated)
endfunction()
