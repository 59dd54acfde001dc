package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"sigs.k8s.io/yaml"
)

// checkCustomResources validates every document of a multi-document YAML file whose kind is the
// CustomResourceDefinition's against the openAPIV3Schema of its version, strictly: an object
// schema that lists properties takes no other (as the API server's pruning would silently drop
// them), unless it says x-kubernetes-preserve-unknown-fields. Prints how many it checked.
func checkCustomResources(crdFile, file string) error {
	raw, err := os.ReadFile(crdFile)
	if err != nil {
		return err
	}
	var crd struct {
		Spec struct {
			Group string `json:"group"`
			Names struct {
				Kind string `json:"kind"`
			} `json:"names"`
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		return fmt.Errorf("%s: %w", crdFile, err)
	}
	schemas := map[string]*jsonschema.Schema{}
	for _, v := range crd.Spec.Versions {
		c := jsonschema.NewCompiler()
		url := fmt.Sprintf("crd://%s/%s", crd.Spec.Group, v.Name)
		if err := c.AddResource(url, strictSchema(v.Schema.OpenAPIV3Schema)); err != nil {
			return err
		}
		s, err := c.Compile(url)
		if err != nil {
			return fmt.Errorf("%s %s: %w", crd.Spec.Names.Kind, v.Name, err)
		}
		schemas[crd.Spec.Group+"/"+v.Name] = s
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	n := 0
	for i, doc := range docSeparator.Split(string(data), -1) {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		if obj == nil || obj["kind"] != crd.Spec.Names.Kind {
			continue
		}
		api, _ := obj["apiVersion"].(string)
		s := schemas[api]
		if s == nil {
			return fmt.Errorf("document %d: %s of apiVersion %q, which the definition does not have", i, crd.Spec.Names.Kind, api)
		}
		if err := s.Validate(obj); err != nil {
			return fmt.Errorf("document %d (%s): %w", i, crd.Spec.Names.Kind, err)
		}
		n++
	}
	fmt.Printf("%d %s(s) valid\n", n, crd.Spec.Names.Kind)
	return nil
}

// strictSchema turns a structural schema's open objects with listed properties into closed ones
// and drops the Kubernetes extensions a JSON-schema validator does not know (CEL rules, list
// and map types); apiVersion, kind and metadata stay as the API server has them.
func strictSchema(s map[string]any) map[string]any {
	var walk func(v any, top bool)
	walk = func(v any, top bool) {
		switch x := v.(type) {
		case map[string]any:
			props, hasProps := x["properties"].(map[string]any)
			_, hasAdditional := x["additionalProperties"]
			preserve, _ := x["x-kubernetes-preserve-unknown-fields"].(bool)
			if hasProps && !hasAdditional && !preserve {
				x["additionalProperties"] = false
			}
			if top && hasProps {
				for _, k := range []string{"apiVersion", "kind"} {
					if _, ok := props[k]; !ok {
						props[k] = map[string]any{}
					}
				}
				props["metadata"] = map[string]any{"type": "object"}
			}
			for k := range x {
				if strings.HasPrefix(k, "x-kubernetes-") {
					delete(x, k)
				}
			}
			for k, c := range x {
				if k == "properties" {
					for _, p := range c.(map[string]any) {
						walk(p, false)
					}
					continue
				}
				walk(c, false)
			}
		case []any:
			for _, c := range x {
				walk(c, false)
			}
		}
	}
	walk(s, true)
	return s
}
