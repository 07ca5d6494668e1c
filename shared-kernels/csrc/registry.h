// Self-registration of binding functions: each op's binding file adds itself with
// SK_REGISTER_BINDINGS(name) { m.def(...); } so no central file lists the ops.
#pragma once
#include <pybind11/pybind11.h>

#include <functional>
#include <utility>
#include <vector>

namespace shared_kernels::bind {

using BindFn = void (*)(pybind11::module_&);

inline std::vector<std::pair<const char*, BindFn>>& registry() {
  static std::vector<std::pair<const char*, BindFn>> fns;
  return fns;
}

struct Registrar {
  Registrar(const char* name, BindFn fn) { registry().emplace_back(name, fn); }
};

}  // namespace shared_kernels::bind

#define SK_REGISTER_BINDINGS(NAME)                                                              \
  static void sk_bind_##NAME(pybind11::module_& m);                                            \
  static ::shared_kernels::bind::Registrar sk_registrar_##NAME(#NAME, &sk_bind_##NAME);         \
  static void sk_bind_##NAME(pybind11::module_& m)
