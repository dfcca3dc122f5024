package pgstore

import "time"

// Now returns the time on the store's clock: time.Now, or the clock given
// with [WithClock]. The ExpiresAt of the records the store returns is read
// on it, and the middleware reads the time left on an in-flight record's
// lease against it (the Retry-After of a 409 for a key in flight).
func (s *Store) Now() time.Time { return s.now() }
