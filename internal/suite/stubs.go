package suite

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// RequireEveryStub fails t unless the test file stubs (of the calling
// module) runs every shared suite of this package: each exported function
// of dir (this package's directory, as the caller reaches it) that takes a
// *testing.T and a Harness must be named, as suite.Name, in the code of
// stubs (not in a comment). The root module and tests/ keep two lists of
// stubs, one per set of stores; this keeps them from drifting apart.
func RequireEveryStub(t *testing.T, dir, stubs string) {
	t.Helper()
	suites, err := suiteNames(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(suites) == 0 {
		t.Fatalf("no suites found in %s", dir)
	}
	file, err := parser.ParseFile(token.NewFileSet(), stubs, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	ast.Inspect(file, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "suite" {
				used[sel.Sel.Name] = true
			}
		}
		return true
	})
	for _, name := range suites {
		if !used[name] {
			t.Errorf("%s does not run suite.%s on its stores", stubs, name)
		}
	}
}

// suiteNames lists the exported functions of the package in dir whose
// parameters are (*testing.T, Harness).
func suiteNames(dir string) ([]string, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, path := range paths {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		for _, decl := range file.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if ok && fn.Recv == nil && fn.Name.IsExported() && isSuite(fn.Type.Params.List) {
				names = append(names, fn.Name.Name)
			}
		}
	}
	return names, nil
}

// isSuite reports whether params are (t *testing.T, h Harness).
func isSuite(params []*ast.Field) bool {
	if len(params) != 2 || len(params[0].Names) > 1 {
		return false
	}
	star, ok := params[0].Type.(*ast.StarExpr)
	if !ok {
		return false
	}
	sel, ok := star.X.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "T" {
		return false
	}
	h, ok := params[1].Type.(*ast.Ident)
	return ok && h.Name == "Harness"
}
