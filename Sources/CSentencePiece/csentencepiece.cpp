// Implementation of csentencepiece.h. No exception escapes: each entry point has a
// catch-all that turns it into an error message.
#include "csentencepiece.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

struct spm_processor {
    sentencepiece::SentencePieceProcessor sp;
};

static void set_err(char *err, size_t err_len, const std::string &msg) {
    if (err == nullptr || err_len == 0) return;
    size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
}

static char *copy_out(const std::string &s, size_t *out_len) {
    char *buf = static_cast<char *>(std::malloc(s.size() + 1));
    if (buf == nullptr) return nullptr;
    std::memcpy(buf, s.data(), s.size());
    buf[s.size()] = '\0';
    *out_len = s.size();
    return buf;
}

extern "C" spm_processor *spm_load(const char *path, char *err, size_t err_len) {
    try {
        auto *p = new spm_processor();
        auto status = p->sp.Load(path);
        if (!status.ok()) {
            set_err(err, err_len, status.ToString());
            delete p;
            return nullptr;
        }
        return p;
    } catch (const std::exception &e) {
        set_err(err, err_len, e.what());
    } catch (...) {
        set_err(err, err_len, "unknown C++ exception in SentencePiece Load");
    }
    return nullptr;
}

extern "C" void spm_free(spm_processor *p) { delete p; }

extern "C" int32_t spm_vocab_size(const spm_processor *p) { return p->sp.GetPieceSize(); }
extern "C" int32_t spm_bos_id(const spm_processor *p) { return p->sp.bos_id(); }
extern "C" int32_t spm_eos_id(const spm_processor *p) { return p->sp.eos_id(); }
extern "C" int32_t spm_pad_id(const spm_processor *p) { return p->sp.pad_id(); }
extern "C" int32_t spm_unk_id(const spm_processor *p) { return p->sp.unk_id(); }

extern "C" int spm_encode(const spm_processor *p, const char *text, size_t len,
                          int32_t **out_ids, size_t *out_count, char *err, size_t err_len) {
    try {
        std::vector<int> ids;
        auto status = p->sp.Encode(std::string(text, len), &ids);
        if (!status.ok()) {
            set_err(err, err_len, status.ToString());
            return 1;
        }
        auto *buf = static_cast<int32_t *>(std::malloc(sizeof(int32_t) * (ids.empty() ? 1 : ids.size())));
        if (buf == nullptr) {
            set_err(err, err_len, "out of memory");
            return 1;
        }
        for (size_t i = 0; i < ids.size(); ++i) buf[i] = ids[i];
        *out_ids = buf;
        *out_count = ids.size();
        return 0;
    } catch (const std::exception &e) {
        set_err(err, err_len, e.what());
    } catch (...) {
        set_err(err, err_len, "unknown C++ exception in SentencePiece Encode");
    }
    return 1;
}

extern "C" void spm_free_ids(int32_t *ids) { std::free(ids); }

extern "C" int spm_decode(const spm_processor *p, const int32_t *ids, size_t count,
                          char **out_text, size_t *out_len, char *err, size_t err_len) {
    try {
        std::vector<int> v(ids, ids + count);
        int n = p->sp.GetPieceSize();
        for (int id : v) {
            if (id < 0 || id >= n) {
                set_err(err, err_len, "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(n));
                return 1;
            }
        }
        std::string text;
        auto status = p->sp.Decode(v, &text);
        if (!status.ok()) {
            set_err(err, err_len, status.ToString());
            return 1;
        }
        *out_text = copy_out(text, out_len);
        if (*out_text == nullptr) {
            set_err(err, err_len, "out of memory");
            return 1;
        }
        return 0;
    } catch (const std::exception &e) {
        set_err(err, err_len, e.what());
    } catch (...) {
        set_err(err, err_len, "unknown C++ exception in SentencePiece Decode");
    }
    return 1;
}

extern "C" int spm_id_to_piece(const spm_processor *p, int32_t id,
                               char **out_text, size_t *out_len, char *err, size_t err_len) {
    try {
        if (id < 0 || id >= p->sp.GetPieceSize()) {
            set_err(err, err_len, "token id " + std::to_string(id) + " is outside the vocabulary");
            return 1;
        }
        *out_text = copy_out(p->sp.IdToPiece(id), out_len);
        if (*out_text == nullptr) {
            set_err(err, err_len, "out of memory");
            return 1;
        }
        return 0;
    } catch (const std::exception &e) {
        set_err(err, err_len, e.what());
    } catch (...) {
        set_err(err, err_len, "unknown C++ exception in SentencePiece IdToPiece");
    }
    return 1;
}

extern "C" void spm_free_text(char *text) { std::free(text); }
