// Fuzz harness: the TensorRT plugins' creation-field parsing and their engine
// deserialisation, through what TensorRT itself uses: the plugin library's getCreators() and
// setLoggerFinder() entry points and the public IPluginCreatorV3One / IPluginV3 interfaces
// (nothing of the plugins' own headers, which change).
//
// Input: a flags byte (bit 0: runtime phase, i.e. engine deserialisation, else build; bit 1:
// null layer name; bit 2: null field collection; bits 4-7: which creator, modulo their
// number), then records
//   [selector u8][type u8][length int32 LE][payload]
// selector & 0x7f indexes the field names the plugin has shown (getFieldNames, then any
// extra name its getFieldsToSerialize adds), larger values an unknown name; selector bit 7:
// a null name. type & 0x7f: the PluginFieldType
// code; type bit 7: a null data pointer. The payload fills a buffer of exactly
// length * sizeof(type) bytes (zeros past the input's end; at most 64 KiB).
//
// Checks:
//   - createPlugin returns nullptr after logging at least one kERROR, or a plugin;
//   - a plugin's getFieldsToSerialize, fed back to createPlugin(kRUNTIME) as TensorRT does
//     when it deserialises an engine, gives a plugin whose fields serialise to the same
//     names, types and bytes, and so does clone(); plugins delete cleanly (LeakSanitizer).
#include <NvInferRuntime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_check.h"

using namespace nvinfer1;

// The plugin library's entry points (BQQPluginLibrary.cpp), as TensorRT's loadLibrary sees them.
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(ILoggerFinder* finder);

namespace {

class CountingLogger final : public ILogger {
public:
    void log(Severity severity, char const* msg) noexcept override {
        FUZZ_CHECK(msg != nullptr && *msg != '\0', "empty log message");
        if (severity <= Severity::kERROR) ++errors;
    }
    int errors = 0;
};

CountingLogger g_logger;
// Per creator, the field names seen through the interface: getFieldNames, then the extras
// getFieldsToSerialize adds (reserved: a name's c_str() stays valid while a case adds more).
std::vector<std::vector<std::string>> g_names;

class Finder final : public ILoggerFinder {
public:
    ILogger* findLogger() noexcept override { return &g_logger; }
};

Finder g_finder;

size_t type_size(int32_t code) {
    switch (code) {
    case 0: case 4: case 9: return 2;   // kFLOAT16 kINT16 kBF16
    case 1: case 5: return 4;           // kFLOAT32 kINT32
    case 2: case 10: return 8;          // kFLOAT64 kINT64
    case 7: return sizeof(Dims);        // kDIMS
    default: return 1;                  // kINT8 kCHAR kUNKNOWN kFP8 kINT4 kFP4, unknown codes
    }
}

// A plugin's serialised fields: name, type and the bytes of its data.
struct Field {
    std::string name;
    int32_t type;
    int32_t length;
    std::vector<uint8_t> bytes;
    bool operator==(Field const& o) const {
        return name == o.name && type == o.type && length == o.length && bytes == o.bytes;
    }
};

std::vector<Field> serialised(IPluginV3* plugin, std::vector<std::string>& names) {
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    FUZZ_CHECK(runtime != nullptr, "no runtime capability");
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    FUZZ_CHECK(fc != nullptr && fc->nbFields > 0 && fc->fields != nullptr, "nothing to serialise");
    std::vector<Field> out;
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        FUZZ_CHECK(f.name != nullptr && f.data != nullptr && f.length >= 0, "serialised field %d: null name or data", i);
        const int32_t type = static_cast<int32_t>(f.type);
        const auto* data = static_cast<uint8_t const*>(f.data);
        out.push_back({f.name, type, f.length, std::vector<uint8_t>(data, data + f.length * type_size(type))});
        if (names.size() < names.capacity() && std::find(names.begin(), names.end(), f.name) == names.end()) {
            names.emplace_back(f.name);
        }
    }
    return out;
}

std::vector<IPluginCreatorV3One*> const& creators() {
    static std::vector<IPluginCreatorV3One*> found = [] {
        setLoggerFinder(&g_finder);
        int32_t n = 0;
        IPluginCreatorInterface* const* list = getCreators(n);
        FUZZ_CHECK(n >= 1 && list != nullptr, "getCreators returned %d creators", n);
        std::vector<IPluginCreatorV3One*> out;
        for (int32_t i = 0; i < n; ++i) {
            FUZZ_CHECK(list[i] != nullptr && std::strcmp(list[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
                       "creator %d is not an IPluginCreatorV3One", i);
            auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
            PluginFieldCollection const* names = c->getFieldNames();
            FUZZ_CHECK(names != nullptr && names->nbFields > 0, "creator %d: getFieldNames is empty", i);
            out.push_back(c);
            g_names.emplace_back();
            g_names.back().reserve(256);
            for (int32_t f = 0; f < names->nbFields; ++f) g_names.back().emplace_back(names->fields[f].name);
        }
        return out;
    }();
    return found;
}

}  // namespace

// TensorRT's own logger (libnvinfer), the plugin's fallback when no finder is set.
extern "C" ILogger* getLogger() noexcept { return &g_logger; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const uint8_t flags = data[0];
    const size_t which = (flags >> 4) % creators().size();
    IPluginCreatorV3One* c = creators()[which];
    std::vector<std::string>& known = g_names[which];
    static char const* const kOtherNames[] = {"", "unknown", "out_features ", "OUT_FEATURES", "rank\n",
                                              "format_versio", "stacksstacksstacksstacksstacksstacks"};
    std::vector<PluginField> fields;
    std::vector<std::unique_ptr<uint8_t[]>> buffers;
    size_t pos = 1;
    while (pos + 6 <= size && fields.size() < 64) {
        const uint8_t selector = data[pos], type = data[pos + 1];
        int32_t length = 0;
        std::memcpy(&length, data + pos + 2, sizeof length);
        pos += 6;
        const size_t index = selector & 0x7f;
        char const* name = index < known.size()
            ? known[index].c_str()
            : kOtherNames[(index - known.size()) % (sizeof kOtherNames / sizeof *kOtherNames)];
        const int32_t code = type & 0x7f;
        const uint64_t want = length > 0 ? static_cast<uint64_t>(length) * type_size(code) : 0;
        const size_t bytes = static_cast<size_t>(want < (1u << 16) ? want : (1u << 16));
        // Exactly `bytes` bytes (at least one allocation): reading past them is an ASan report.
        buffers.emplace_back(new uint8_t[bytes ? bytes : 1]());
        const size_t take = std::min(bytes, size - pos);
        std::memcpy(buffers.back().get(), data + pos, take);
        pos += take;
        fields.emplace_back((selector & 0x80) ? nullptr : name, (type & 0x80) ? nullptr : buffers.back().get(),
                            static_cast<PluginFieldType>(code), length);
    }
    PluginFieldCollection fc{};
    fc.nbFields = static_cast<int32_t>(fields.size());
    fc.fields = fields.empty() ? nullptr : fields.data();
    const TensorRTPhase phase = (flags & 1) ? TensorRTPhase::kRUNTIME : TensorRTPhase::kBUILD;

    g_logger.errors = 0;
    std::unique_ptr<IPluginV3> plugin(c->createPlugin((flags & 2) ? nullptr : "layer", (flags & 4) ? nullptr : &fc, phase));
    if (!plugin) {
        FUZZ_CHECK(g_logger.errors > 0, "createPlugin returned nullptr without logging an error");
        return 0;
    }
    const auto fields_out = serialised(plugin.get(), known);
    // Engine deserialisation: TensorRT hands the serialised fields back to createPlugin.
    PluginFieldCollection const* stored =
        static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME))
            ->getFieldsToSerialize();
    std::unique_ptr<IPluginV3> restored(c->createPlugin("layer", stored, TensorRTPhase::kRUNTIME));
    FUZZ_CHECK(restored != nullptr, "createPlugin(kRUNTIME) rejects the plugin's own serialised fields");
    FUZZ_CHECK(serialised(restored.get(), known) == fields_out, "fields change in a serialise / deserialise round trip");
    std::unique_ptr<IPluginV3> copy(plugin->clone());
    FUZZ_CHECK(copy != nullptr && serialised(copy.get(), known) == fields_out, "clone() changes the fields");
    return 0;
}
