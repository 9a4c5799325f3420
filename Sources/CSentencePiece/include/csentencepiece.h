// A C ABI over SentencePiece's C++ SentencePieceProcessor.
// Every function catches C++ exceptions and reports failure through its return value:
// 0 on success, non-zero on failure with a message copied into `err` (NUL-terminated,
// truncated to `err_len`). Handles are owned by the caller and freed with spm_free.
#ifndef CSENTENCEPIECE_H
#define CSENTENCEPIECE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct spm_processor spm_processor;

/// Loads a tokenizer.model file. Returns NULL on failure with the reason in err.
spm_processor *spm_load(const char *path, char *err, size_t err_len);
void spm_free(spm_processor *p);

int32_t spm_vocab_size(const spm_processor *p);
int32_t spm_bos_id(const spm_processor *p);
int32_t spm_eos_id(const spm_processor *p);
int32_t spm_pad_id(const spm_processor *p);
int32_t spm_unk_id(const spm_processor *p);

/// Encodes UTF-8 text of `len` bytes. On success *out_ids is a malloc'd array of
/// *out_count ids that the caller frees with spm_free_ids.
int spm_encode(const spm_processor *p, const char *text, size_t len,
               int32_t **out_ids, size_t *out_count, char *err, size_t err_len);
void spm_free_ids(int32_t *ids);

/// Decodes ids to UTF-8. On success *out_text is a malloc'd buffer of *out_len bytes
/// (NUL-terminated) that the caller frees with spm_free_text.
int spm_decode(const spm_processor *p, const int32_t *ids, size_t count,
               char **out_text, size_t *out_len, char *err, size_t err_len);
void spm_free_text(char *text);

/// The piece string of one id (for streaming output and debugging); same ownership.
int spm_id_to_piece(const spm_processor *p, int32_t id,
                    char **out_text, size_t *out_len, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
