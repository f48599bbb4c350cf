// Stub: the CPU torch wheel ships no CUDA build configuration.
#pragma once
