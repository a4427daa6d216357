#include "core/tokenizer.h"

#include "core/tokenizer_impl.h"

#include "core/error.h"
#include "core/spm_plugin/spm_plugin.h"
#include "core/system.h"

#include <QDir>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <algorithm>
#include <cstdlib>
#include <dlfcn.h>
#include <mutex>

#ifndef PBLLM_PLUGIN_RELATIVE_DIR
#define PBLLM_PLUGIN_RELATIVE_DIR "../lib/pbllm"
#endif
#ifndef PBLLM_PLUGIN_INSTALL_DIR
#define PBLLM_PLUGIN_INSTALL_DIR ""
#endif

namespace pbllm {
namespace {

constexpr const char* kPluginFile = "libpbllm_spm.so";

// How the plugin is isolated from libtorch's protobuf (see spm_plugin.h). Normally
// RTLD_DEEPBIND: its SentencePiece binds to its own protobuf first. AddressSanitizer refuses
// RTLD_DEEPBIND (its interceptors must stay first in lookup), so sanitizer builds compile the
// plugin without sanitizers and load it into a link-map namespace of its own (dlmopen): there it
// meets no libtorch at all. No memory crosses the C interface, so its separate libc is harmless.
void* open_plugin(const std::string& path)
{
#ifdef PBLLM_SANITIZER_BUILD
    return ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
#else
    return ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
}

/// The plugin's entry points, resolved once per process.
struct PluginApi {
    std::string path;
    decltype(&pbllm_spm_abi_version) abi_version = nullptr;
    decltype(&pbllm_spm_load) load = nullptr;
    decltype(&pbllm_spm_free) free = nullptr;
    decltype(&pbllm_spm_vocab_size) vocab_size = nullptr;
    decltype(&pbllm_spm_special_id) special_id = nullptr;
    decltype(&pbllm_spm_piece) piece = nullptr;
    decltype(&pbllm_spm_piece_type) piece_type = nullptr;
    decltype(&pbllm_spm_score) score = nullptr;
    decltype(&pbllm_spm_encode) encode = nullptr;
    decltype(&pbllm_spm_decode) decode = nullptr;
};

std::vector<std::string> plugin_candidates()
{
    std::vector<std::string> out;
    if (const char* env = std::getenv("PBLLM_SPM_PLUGIN"); env && *env)
        out.emplace_back(env);
    const std::string exe = executable_dir();
    if (!exe.empty()) {
        out.push_back(exe + "/" + kPluginFile);
        // An installed tree moved elsewhere (a package unpacked into a scratch root, say).
        out.push_back(exe + "/" PBLLM_PLUGIN_RELATIVE_DIR "/" + kPluginFile);
    }
    if (*PBLLM_PLUGIN_INSTALL_DIR)
        out.push_back(std::string(PBLLM_PLUGIN_INSTALL_DIR) + "/" + kPluginFile);
    return out;
}

const PluginApi& plugin()
{
    static std::once_flag once;
    static PluginApi api;
    static std::string failure;
    std::call_once(once, [] {
        std::string tried;
        for (const std::string& candidate : plugin_candidates()) {
            if (!QFileInfo::exists(QString::fromStdString(candidate))) {
                tried += "\n  " + candidate + " (absent)";
                continue;
            }
            void* handle = open_plugin(candidate);
            if (!handle) {
                tried += "\n  " + candidate + " (" + ::dlerror() + ")";
                continue;
            }
            auto sym = [&](const char* name) {
                void* p = ::dlsym(handle, name);
                if (!p)
                    throw Error(candidate + ": tokenizer plugin lacks symbol " + name);
                return p;
            };
            api.path = candidate;
            api.abi_version = reinterpret_cast<decltype(api.abi_version)>(sym("pbllm_spm_abi_version"));
            if (api.abi_version() != PBLLM_SPM_ABI_VERSION) {
                failure = candidate + ": tokenizer plugin ABI " + std::to_string(api.abi_version()) + ", expected " +
                          std::to_string(PBLLM_SPM_ABI_VERSION);
                return;
            }
            api.load = reinterpret_cast<decltype(api.load)>(sym("pbllm_spm_load"));
            api.free = reinterpret_cast<decltype(api.free)>(sym("pbllm_spm_free"));
            api.vocab_size = reinterpret_cast<decltype(api.vocab_size)>(sym("pbllm_spm_vocab_size"));
            api.special_id = reinterpret_cast<decltype(api.special_id)>(sym("pbllm_spm_special_id"));
            api.piece = reinterpret_cast<decltype(api.piece)>(sym("pbllm_spm_piece"));
            api.piece_type = reinterpret_cast<decltype(api.piece_type)>(sym("pbllm_spm_piece_type"));
            api.score = reinterpret_cast<decltype(api.score)>(sym("pbllm_spm_score"));
            api.encode = reinterpret_cast<decltype(api.encode)>(sym("pbllm_spm_encode"));
            api.decode = reinterpret_cast<decltype(api.decode)>(sym("pbllm_spm_decode"));
            return;
        }
        failure = std::string("the SentencePiece tokenizer plugin ") + kPluginFile +
                  " was not found; set PBLLM_SPM_PLUGIN to its path. Looked in:" + tried;
    });
    if (!failure.empty())
        throw Error(failure);
    return api;
}

void append_bytes(void* ctx, const char* bytes, size_t n) { static_cast<std::string*>(ctx)->append(bytes, n); }

void append_ids(void* ctx, const int32_t* ids, size_t n)
{
    auto* out = static_cast<std::vector<int>*>(ctx);
    out->insert(out->end(), ids, ids + n);
}

/// SentencePiece through the plugin.
struct SpmTokenizer final : Tokenizer::Impl {
    const PluginApi* api = nullptr;
    PbllmSpm* handle = nullptr;

    ~SpmTokenizer() override
    {
        if (handle)
            api->free(handle);
    }

    std::vector<int> encode(std::string_view text) const override
    {
        std::vector<int> ids;
        ids.reserve(text.size() / 3 + 8);
        char err[512] = {0};
        if (api->encode(handle, text.data(), text.size(), append_ids, &ids, err, sizeof err) != 0)
            throw Error(origin + ": encoding failed: " + err);
        return ids;
    }

    std::string decode(const std::vector<int>& ids) const override
    {
        std::vector<int32_t> in(ids.begin(), ids.end());
        std::string text;
        char err[512] = {0};
        if (api->decode(handle, in.data(), in.size(), append_bytes, &text, err, sizeof err) != 0)
            throw Error(origin + ": decoding failed: " + err);
        return text;
    }

    std::string piece(int id) const override
    {
        std::string p;
        api->piece(handle, id, append_bytes, &p);
        return p;
    }

    float score(int id) const override { return api->score(handle, id); }
};

std::shared_ptr<const Tokenizer::Impl> make_spm_tokenizer(std::string bytes, const std::string& origin)
{
    auto impl = std::make_shared<SpmTokenizer>();
    impl->api = &plugin();
    char err[512] = {0};
    impl->handle = impl->api->load(bytes.data(), bytes.size(), err, sizeof err);
    if (!impl->handle)
        throw Error(origin + ": not a SentencePiece model (" + err + ")");
    impl->bytes = std::move(bytes);
    impl->origin = origin;
    impl->kind = "sentencepiece";
    impl->strips_leading_space = true;
    impl->vocab = impl->api->vocab_size(impl->handle);
    impl->bos = impl->api->special_id(impl->handle, 1);
    impl->eos = impl->api->special_id(impl->handle, 2);
    if (impl->eos >= 0)
        impl->stops.push_back(impl->eos);
    impl->token_bytes.resize(impl->vocab);
    for (int id = 0; id < impl->vocab; ++id) {
        const std::string piece = impl->piece(id);
        const int type = impl->api->piece_type(impl->handle, id);
        std::string& out = impl->token_bytes[id];
        if (type == 6 && piece.size() == 6 && piece.rfind("<0x", 0) == 0) {
            out.assign(1, static_cast<char>(std::strtol(piece.substr(3, 2).c_str(), nullptr, 16)));
        } else if (type == 3 || type == 5) {
            out.clear();
        } else {
            for (std::size_t i = 0; i < piece.size();) {
                if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {
                    out += ' ';
                    i += 3;
                } else {
                    out += piece[i++];
                }
            }
        }
    }
    return impl;
}

/// tokenizer.json text (or its embedded form, which starts with a header line), not a SentencePiece
/// protobuf: a protobuf never starts with '{' or 'P' (field tags there are 0x0A, 0x12, ...).
bool looks_like_bpe_json(std::string_view bytes)
{
    const std::size_t first = bytes.find_first_not_of(" \t\r\n");
    return first != std::string_view::npos && (bytes[first] == '{' || bytes.substr(first, 10) == "PBLLM-BPE ");
}

} // namespace

Tokenizer Tokenizer::from_file(const std::string& path)
{
    const QFileInfo info(QString::fromStdString(path));
    if (!info.isFile())
        throw Error(path + ": tokenizer model not found");
    std::string bytes = read_file_bytes(path);
    if (looks_like_bpe_json(bytes))
        return Tokenizer(make_bpe_tokenizer(std::move(bytes), path, info.absolutePath().toStdString()));
    return Tokenizer(make_spm_tokenizer(std::move(bytes), path));
}

Tokenizer Tokenizer::from_bytes(std::string bytes, const std::string& origin)
{
    if (looks_like_bpe_json(bytes))
        return Tokenizer(make_bpe_tokenizer(std::move(bytes), origin, std::string()));
    return Tokenizer(make_spm_tokenizer(std::move(bytes), origin));
}

std::vector<int> Tokenizer::encode(std::string_view text, bool add_bos) const
{
    std::vector<int> ids = impl_->encode(text);
    if (add_bos && impl_->bos >= 0)
        ids.insert(ids.begin(), impl_->bos);
    return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const
{
    for (int id : ids)
        token_bytes(id); // bounds check, with the message naming the vocabulary
    return impl_->decode(ids);
}

int Tokenizer::vocab_size() const { return impl_->vocab; }
int Tokenizer::bos_id() const { return impl_->bos; }
int Tokenizer::eos_id() const { return impl_->eos; }
const std::vector<int>& Tokenizer::stop_ids() const { return impl_->stops; }
bool Tokenizer::is_stop(int id) const
{
    return std::find(impl_->stops.begin(), impl_->stops.end(), id) != impl_->stops.end();
}
const std::string& Tokenizer::model_bytes() const { return impl_->bytes; }
std::string_view Tokenizer::file_bytes() const { return std::string_view(impl_->bytes).substr(impl_->file_begin); }
const std::string& Tokenizer::origin() const { return impl_->origin; }
const std::string& Tokenizer::kind() const { return impl_->kind; }
bool Tokenizer::strips_leading_space() const { return impl_->strips_leading_space; }

const std::string& Tokenizer::token_bytes(int id) const
{
    if (id < 0 || id >= impl_->vocab)
        throw Error(impl_->origin + ": token id " + std::to_string(id) + " is outside the vocabulary of " +
                    std::to_string(impl_->vocab));
    return impl_->token_bytes[id];
}

std::string Tokenizer::piece(int id) const
{
    token_bytes(id); // bounds check
    return impl_->piece(id);
}

float Tokenizer::score(int id) const
{
    token_bytes(id); // bounds check
    return impl_->score(id);
}

std::string StreamingDetokenizer::push(int id)
{
    if (id == tokenizer_.bos_id()) {
        at_start_ = true;
        return {};
    }
    std::string_view bytes = tokenizer_.token_bytes(id);
    if (at_start_ && !bytes.empty() && tokenizer_.strips_leading_space()) {
        if (bytes.front() == ' ')
            bytes.remove_prefix(1);
        at_start_ = false;
    }
    pending_.append(bytes);
    // Emit everything up to the last complete UTF-8 character.
    std::size_t complete = pending_.size();
    for (std::size_t back = 1; back <= std::min<std::size_t>(4, pending_.size()); ++back) {
        const unsigned char c = static_cast<unsigned char>(pending_[pending_.size() - back]);
        if ((c & 0xC0) == 0x80)
            continue; // continuation byte: keep looking for the lead byte
        const std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (need > back)
            complete = pending_.size() - back;
        break;
    }
    std::string out = pending_.substr(0, complete);
    pending_.erase(0, complete);
    return out;
}

std::string StreamingDetokenizer::flush()
{
    std::string out;
    out.swap(pending_);
    return out;
}

std::string find_tokenizer_beside(const std::string& model_path)
{
    const QFileInfo info(QString::fromStdString(model_path));
    const QDir dir = info.isDir() ? QDir(info.absoluteFilePath()) : info.absoluteDir();
    if (dir.exists("tokenizer.model"))
        return dir.absoluteFilePath("tokenizer.model").toStdString();
    const QStringList models = dir.entryList({"*.model"}, QDir::Files);
    if (models.size() == 1)
        return dir.absoluteFilePath(models.front()).toStdString();
    if (models.empty() && dir.exists("tokenizer.json"))
        return dir.absoluteFilePath("tokenizer.json").toStdString();
    return std::string();
}

void copy_tokenizer_files(const std::string& tokenizer_path, const std::string& dir)
{
    const std::string bytes = read_file_bytes(tokenizer_path);
    QDir out(QString::fromStdString(dir));
    const QStringList side_files{"tokenizer_config.json", "generation_config.json"};
    // A tokenizer of the other kind left in the folder by an earlier export would be found first.
    if (!looks_like_bpe_json(bytes)) {
        for (const QString& stale : QStringList{"tokenizer.json"} + side_files)
            out.remove(stale);
        write_file_atomically(dir + "/tokenizer.model", bytes);
        return;
    }
    // Everything is read before anything is removed: the source may be this very folder.
    const QDir source = QFileInfo(QString::fromStdString(tokenizer_path)).absoluteDir();
    std::vector<std::pair<QString, std::string>> sides;
    for (const QString& side : side_files)
        if (source.exists(side))
            sides.emplace_back(side, read_file_bytes(source.filePath(side).toStdString()));
    out.remove("tokenizer.model");
    for (const QString& side : side_files)
        out.remove(side);
    write_file_atomically(dir + "/tokenizer.json", bytes);
    for (const auto& [side, side_bytes] : sides)
        write_file_atomically(dir + "/" + side.toStdString(), side_bytes);
}

void write_tokenizer_files(const Tokenizer& tokenizer, const std::string& dir)
{
    QDir out(QString::fromStdString(dir));
    const std::string bytes(tokenizer.file_bytes());
    const QStringList bpe_files{"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    if (tokenizer.kind() != "bpe") {
        for (const QString& stale : bpe_files)
            out.remove(stale);
        write_file_atomically(dir + "/tokenizer.model", bytes);
        return;
    }
    // BOS, EOS and the stop ids go where from_file reads them.
    auto piece_or_null = [&](int id) {
        return id >= 0 ? QJsonValue(QString::fromStdString(tokenizer.piece(id))) : QJsonValue(QJsonValue::Null);
    };
    QJsonObject config{{"add_bos_token", tokenizer.bos_id() >= 0},
                       {"bos_token", piece_or_null(tokenizer.bos_id())},
                       {"eos_token", piece_or_null(tokenizer.eos_id())}};
    QJsonArray stops;
    for (int id : tokenizer.stop_ids())
        stops.append(id);
    QJsonObject generation{{"eos_token_id", stops.isEmpty() ? QJsonValue(QJsonValue::Null) : stops.size() == 1 ? stops.at(0) : QJsonValue(stops)}};
    if (tokenizer.bos_id() >= 0)
        generation.insert("bos_token_id", tokenizer.bos_id());
    out.remove("tokenizer.model");
    write_file_atomically(dir + "/tokenizer.json", bytes);
    write_file_atomically(dir + "/tokenizer_config.json", QJsonDocument(config).toJson().toStdString());
    write_file_atomically(dir + "/generation_config.json", QJsonDocument(generation).toJson().toStdString());
}

std::string spm_plugin_path() { return plugin().path; }

} // namespace pbllm
