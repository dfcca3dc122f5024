package idempotency

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/uuid"
)

// A KeyValidator reports whether a key, already unquoted, is valid. Its
// error text becomes the detail of the 400 answer, so it should say what a
// valid key looks like, and must not echo the key.
type KeyValidator func(key string) error

// KeyUUID accepts a UUID of any version RFC 9562 defines (1 to 8: v4, the
// random one the draft recommends, v7, the time-ordered one RFC 9562
// recommends for new identifiers, and the others), with the RFC 9562
// variant, in its canonical form: 36 characters, 8-4-4-4-12 hexadecimal
// digits, in either case. It refuses braces, a "urn:uuid:" prefix, the
// 32-digit form without hyphens, and the Nil and Max UUIDs, which name no
// request. It is the default.
func KeyUUID(key string) error {
	if u, ok := parseCanonicalUUID(key); ok && u.Variant() == uuid.RFC4122 && u.Version() >= 1 && u.Version() <= 8 {
		return nil
	}
	return errors.New("the key must be a UUID (RFC 9562, any version, such as v4 or v7) in its 36-character form of 8-4-4-4-12 hexadecimal digits, such as \"0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10\"")
}

// KeyUUIDv4 accepts only a UUID version 4 in its canonical 36-character
// form, in either case.
//
//	idempotency.WithKeyValidator(idempotency.KeyUUIDv4)
func KeyUUIDv4(key string) error {
	if u, ok := parseCanonicalUUID(key); ok && u.Version() == 4 && u.Variant() == uuid.RFC4122 {
		return nil
	}
	return errors.New("the key must be a UUID version 4, such as \"0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10\"")
}

// KeyAnyUUID accepts any UUID that google/uuid reads from its canonical
// 36-character form: any version and variant, the Nil and Max UUIDs
// included. [KeyUUID], the default, is stricter.
func KeyAnyUUID(key string) error {
	if _, ok := parseCanonicalUUID(key); ok {
		return nil
	}
	return errors.New("the key must be a UUID, such as \"0b0b2e0c-5f4c-4b7e-9a3d-2f1c6e8d9a10\"")
}

// KeyPrintable accepts printable ASCII keys of 1 to max characters (Stripe
// allows 255).
func KeyPrintable(max int) KeyValidator {
	mustPositive("key length", max)
	return func(key string) error {
		if len(key) > max {
			return fmt.Errorf("the key must be at most %d characters long", max)
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x20 || key[i] > 0x7e {
				return errors.New("the key must be printable ASCII")
			}
		}
		return nil
	}
}

func parseCanonicalUUID(key string) (uuid.UUID, bool) {
	if len(key) != 36 { // uuid.Parse also takes braces, urn: and 32-hex forms
		return uuid.UUID{}, false
	}
	u, err := uuid.Parse(key)
	return u, err == nil
}

// maxKeyHeaderLen bounds the work done on one header line before the
// validator has its say.
const maxKeyHeaderLen = 1024

// keyError is a key the middleware refuses; its text is the problem detail.
type keyError string

func (e keyError) Error() string { return string(e) }

// canonicalKey returns a UUID in lower case: UUID text is case-insensitive,
// so the same UUID in upper, lower or mixed case is one key, whatever the
// validator. Any other key is compared as sent.
func canonicalKey(key string) string {
	if len(key) != 36 {
		return key
	}
	upper := false
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return key
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			upper = true
		default:
			return key
		}
	}
	if !upper {
		return key
	}
	return strings.ToLower(key)
}

// readKey returns the request's canonical key, "" when it has none, or a keyError.
// Every line of every configured header counts; two different values are an
// error.
func readKey(h http.Header, names []string, validate KeyValidator) (string, error) {
	key := ""
	for _, name := range names {
		for _, line := range h[name] {
			k, err := parseKeyLine(line)
			if err != nil {
				return "", err
			}
			k = canonicalKey(k)
			if key != "" && k != key {
				return "", keyError("the request carries two different idempotency keys")
			}
			key = k
		}
	}
	if key == "" {
		return "", nil
	}
	if err := validate(key); err != nil {
		return "", keyError(err.Error())
	}
	return key, nil
}

// parseKeyLine reads one header line: a bare token of visible ASCII, or an
// RFC 8941 sf-string ("..." with \" and \\ escapes). Both forms of the same
// value name the same key.
func parseKeyLine(line string) (string, error) {
	if len(line) > maxKeyHeaderLen {
		return "", keyError(fmt.Sprintf("the key header must be at most %d characters long", maxKeyHeaderLen))
	}
	v := strings.Trim(line, " \t")
	switch {
	case v == "":
		return "", keyError("the key is empty")
	case v[0] == '"':
		return parseSFString(v)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return "", keyError("the key must be visible ASCII, or an RFC 8941 quoted string")
		}
	}
	return v, nil
}

// parseSFString decodes an RFC 8941 sf-string that fills all of v.
func parseSFString(v string) (string, error) {
	var b strings.Builder
	escaped := false
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c < 0x20 || c > 0x7e:
			return "", keyError("the quoted key contains a character that is not printable ASCII")
		case c == '\\':
			i++
			if i == len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", keyError("the quoted key has an invalid escape: only \\\" and \\\\ are allowed")
			}
			if !escaped {
				escaped = true
				b.WriteString(v[1 : i-1])
			}
			b.WriteByte(v[i])
		case c == '"':
			if i != len(v)-1 {
				return "", keyError("the quoted key has characters after its closing quote")
			}
			key := v[1:i]
			if escaped {
				key = b.String()
			}
			if key == "" {
				return "", keyError("the key is empty")
			}
			return key, nil
		case escaped:
			b.WriteByte(c)
		}
	}
	return "", keyError("the quoted key has no closing quote")
}
