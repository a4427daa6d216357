// pbllm tokenize: the token ids of a text as the model's tokenizer makes them (to check a
// tokenizer against its reference library, or see how a calibration text is cut).
#include "app/cli/cli_common.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/model.h"
#include "core/model_io.h"
#include "core/packed_checkpoint.h"
#include "core/tokenizer.h"

#include <QJsonArray>

#include <cstdio>

namespace pbllm::cli {

int run_tokenize(const QStringList& args)
{
    CommandLine cl("tokenize", "Token ids of a text, as the model's tokenizer (SentencePiece or tokenizer.json) makes them.",
                   "[MODEL]");
    cl.parser().addOption({"tokenizer", "Tokenizer file (tokenizer.model or tokenizer.json; default: the model's).", "TOK"});
    cl.parser().addOption({"text", "Text to tokenize.", "TEXT"});
    cl.parser().addOption({"file", "UTF-8 file to tokenize.", "FILE"});
    cl.parser().addOption({"bos", "Put the tokenizer's BOS first (when it has one)."});
    cl.parser().addOption({"decode", "Also decode the ids back to text and say whether it equals the input."});
    cl.parse(args);
    if (cl.is_set("text") == cl.is_set("file"))
        throw UsageError{"give exactly one of --text TEXT and --file FILE"};
    const std::string text = cl.is_set("text") ? cl.value("text").toStdString()
                                               : read_text_file(cl.value("file").toStdString());

    Tokenizer tok = [&] {
        if (cl.is_set("tokenizer"))
            return Tokenizer::from_file(cl.value("tokenizer").toStdString());
        const std::string model = cl.model_path();
        if (has_hdf5_signature(model)) // a packed checkpoint: its tokenizer is embedded or beside it
            return tokenizer_for(cl.load_model_at(model, /*mapped=*/true, /*check_finite=*/false));
        const std::string beside = find_tokenizer_beside(model);
        if (beside.empty())
            throw Error(model + ": no tokenizer found beside the model (tokenizer.model, a single *.model file or "
                                "tokenizer.json); give one with --tokenizer");
        return Tokenizer::from_file(beside);
    }();
    const std::vector<int> ids = tok.encode(text, cl.is_set("bos"));

    if (cl.json()) {
        QJsonArray id_array, pieces;
        for (int id : ids) {
            id_array.append(id);
            pieces.append(QString::fromStdString(tok.piece(id)));
        }
        QJsonObject out{{"tokenizer", QString::fromStdString(tok.origin())},
                        {"kind", QString::fromStdString(tok.kind())},
                        {"vocab_size", tok.vocab_size()},
                        {"bos_id", tok.bos_id()},
                        {"eos_id", tok.eos_id()},
                        {"ids", id_array},
                        {"pieces", pieces},
                        {"count", static_cast<double>(ids.size())},
                        {"input_bytes", static_cast<double>(text.size())}};
        if (cl.is_set("decode")) {
            const std::string back = tok.decode(ids);
            out.insert("decoded", QString::fromStdString(back));
            out.insert("round_trip", back == text);
        }
        print_json(out);
        return 0;
    }
    for (std::size_t i = 0; i < ids.size(); ++i)
        std::printf(i ? " %d" : "%d", ids[i]);
    std::printf("\n");
    if (cl.is_set("decode")) {
        const std::string back = tok.decode(ids);
        std::printf("%s\n", back.c_str());
        std::fflush(stdout); // before the note on stderr
        std::fprintf(stderr, "%zu tokens; decoded text %s the input\n", ids.size(),
                     back == text ? "equals" : "differs from");
    }
    return 0;
}

} // namespace pbllm::cli
